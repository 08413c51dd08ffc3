"""The latent cache: each sample is decoded once, VAE/text-encoded once, and trained from safetensors after that.

Layout: `DATASET/.precomputed/avctl/<model key>/<sample>.safetensors` (ltx-trainer's own `.precomputed/` folders are
left alone). Every file carries a key — a hash of the model's config, the bucket, the media bytes and the caption —
in its header, so a stale entry (another model, a re-prepared clip, an edited caption) is re-encoded, never reused.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from avctl.lora import atomic_save_safetensors
from avctl.train import Sample

CACHE_FORMAT = "avctl-latents-1"


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sample_key(backbone: Any, bucket: str, media: list[Path], caption: str) -> str:
    h = hashlib.sha256()
    for part in (CACHE_FORMAT, backbone.config_hash(), bucket, caption, *[_file_digest(p) for p in media]):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()[:32]


def cache_dir(dataset: Path, backbone: Any) -> Path:
    return Path(dataset) / ".precomputed" / "avctl" / backbone.config_hash()


def _read_cached(path: Path, key: str) -> dict[str, torch.Tensor] | None:
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), "pt") as f:
            if (f.metadata() or {}).get("key") != key:
                return None
        return load_file(str(path))
    except Exception:  # a torn or foreign file is simply re-encoded
        return None


def encode_sample(backbone: Any, dataset: Path, row: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Decode and encode one manifest row: target video, its audio (silence when the clip has none), the
    reference (video or audio) and the caption."""
    from avctl import media

    video_path = dataset / row["video"]
    clip = media.read_video(video_path)
    frames = torch.from_numpy(np.ascontiguousarray(clip.frames))[None]  # [1, F, H, W, 3] uint8
    out = {"video": backbone.encode_video(frames)[0]}
    duration = clip.frames.shape[0] / clip.fps
    n_samples = round(duration * backbone.audio_sample_rate)
    audio = row.get("audio")
    wav = media.read_audio(dataset / audio if audio else video_path, backbone.audio_sample_rate, channels=2)
    if wav is None:
        wav = np.zeros((2, n_samples), np.float32)
    wav = _fit_length(wav, n_samples)
    mel = backbone.waveform_to_mel(torch.from_numpy(wav)[None])
    out["audio"] = backbone.encode_audio(mel)[0]
    if row.get("reference_video"):
        ref = media.read_video(dataset / row["reference_video"])
        out["reference"] = backbone.encode_video(torch.from_numpy(np.ascontiguousarray(ref.frames))[None])[0]
    elif row.get("reference_audio"):
        ref_wav = media.read_audio(dataset / row["reference_audio"], backbone.audio_sample_rate, channels=2)
        ref_wav = _fit_length(ref_wav, n_samples)
        out["reference"] = backbone.encode_audio(backbone.waveform_to_mel(torch.from_numpy(ref_wav)[None]))[0]
    text = backbone.encode_text([row.get("caption", "")])
    out["text_video"], out["text_audio"], out["text_mask"] = text.video[0], text.audio[0], text.mask[0]
    out["fps"] = torch.tensor(float(clip.fps))
    return {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in out.items()}


def _fit_length(wav: np.ndarray, n: int) -> np.ndarray:
    """Trim or zero-pad [C, N] audio to exactly n samples (the clip's duration)."""
    if wav.shape[1] >= n:
        return np.ascontiguousarray(wav[:, :n])
    return np.pad(wav, ((0, 0), (0, n - wav.shape[1])))


def load_samples(
    backbone: Any,
    dataset: Path,
    info: dict[str, Any],
    rows: list[dict[str, Any]],
    progress: Callable[[int, int], None] | None = None,
) -> tuple[list[Sample], int]:
    """All samples of a prepared dataset, from the cache where it is fresh, encoding the rest (and caching them).
    Returns the samples and how many were encoded now."""
    dataset = Path(dataset)
    folder = cache_dir(dataset, backbone)
    samples, encoded = [], 0
    for i, row in enumerate(rows):
        media_files = [dataset / row[c] for c in ("video", "reference_video", "reference_audio", "audio") if row.get(c)]
        key = sample_key(backbone, str(info.get("bucket", "")), media_files, row.get("caption", ""))
        rel = Path(row["video"]).with_suffix(".safetensors")
        path = folder / rel
        tensors = _read_cached(path, key)
        if tensors is None:
            with torch.no_grad():
                tensors = encode_sample(backbone, dataset, row)
            atomic_save_safetensors(tensors, path, {"key": key, "format": CACHE_FORMAT})
            encoded += 1
        samples.append(
            Sample(
                video=tensors["video"],
                audio=tensors["audio"],
                reference=tensors["reference"],
                text_video=tensors["text_video"],
                text_audio=tensors["text_audio"],
                text_mask=tensors["text_mask"],
                fps=float(tensors["fps"]),
            )
        )
        if progress:
            progress(i + 1, len(rows))
    return samples, encoded
