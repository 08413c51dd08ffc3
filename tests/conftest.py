"""Shared fixtures: tests make their own media and never download anything."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before anything imports huggingface_hub / transformers
os.environ["TRANSFORMERS_OFFLINE"] = "1"

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from avctl.media import write_video

SAMPLE_RATE = 48_000


def synthetic_frames(frames: int, width: int, height: int, seed: int = 0) -> np.ndarray:
    """[F, H, W, 3] uint8: a gradient background with a moving rectangle and a moving disc, seeded."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width]
    background = np.stack(
        [xs * 200 // max(1, width - 1), ys * 200 // max(1, height - 1), np.full_like(xs, 40 + 30 * (seed % 5))], -1
    ).astype(np.uint8)  # [H, W, 3]
    colour_a, colour_b = rng.integers(60, 256, size=(2, 3))
    out = np.empty((frames, height, width, 3), dtype=np.uint8)  # [F, H, W, 3]
    box_w, box_h, radius = width // 4, height // 4, max(3, min(width, height) // 8)
    for i in range(frames):
        frame = background.copy()
        phase = i / max(1, frames - 1)
        left = int(phase * (width - box_w))
        top = height // 6
        frame[top : top + box_h, left : left + box_w] = colour_a
        cx, cy = int(width * (0.8 - 0.6 * phase)), int(height * 0.7)
        frame[(xs - cx) ** 2 + (ys - cy) ** 2 <= radius**2] = colour_b
        out[i] = frame
    return out


def tone(seconds: float, channels: int = 2, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """[channels, samples] float32 sine tones, a different pitch per channel."""
    t = np.arange(round(seconds * sample_rate)) / sample_rate
    return np.stack([0.4 * np.sin(2 * np.pi * (330 + 110 * c) * t) for c in range(channels)]).astype(np.float32)


def write_synthetic_clip(
    path: Path,
    frames: int = 24,
    width: int = 160,
    height: int = 120,
    fps: float = 12.0,
    audio_channels: int | None = 2,
    seed: int = 0,
) -> Path:
    """An H.264 mp4 with moving shapes and, unless audio_channels is None, tone audio as long as the video."""
    audio = tone(frames / fps, audio_channels) if audio_channels else None
    write_video(path, synthetic_frames(frames, width, height, seed), fps, audio=audio,
                sample_rate=SAMPLE_RATE if audio is not None else None)
    return path


@pytest.fixture
def make_clip(tmp_path: Path) -> Callable[..., Path]:
    """make_clip("sub/name.mp4", frames=..., width=..., height=..., fps=..., audio_channels=..., seed=...) writes a
    synthetic clip under tmp_path and returns its path."""

    def make(name: str = "clip.mp4", **kwargs: object) -> Path:
        return write_synthetic_clip(tmp_path / name, **kwargs)  # type: ignore[arg-type]

    return make


def pytest_configure(config: pytest.Config) -> None:
    # The tiny model's ops are far too small to gain from threads; on 2 shared cores extra threads only add
    # synchronisation cost (10× slower steps measured). Real-size runs keep torch's default.
    import torch

    torch.set_num_threads(1)
