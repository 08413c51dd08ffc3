"""Controlled generation: the flow-matching Euler sampler on the parallel canvas, with LoRAs and strengths.

Each step builds the same canvas training built — noisy target tokens at σ·1000, clean reference tokens at 0,
reference coordinates stretched by the LoRA's downscale factor — and moves the target along the predicted velocity:
x ← x + (σ_next − σ)·v. The σ schedule is shifted by the TARGET token count, exactly as in training.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from avctl.canvas import (
    Canvas,
    Reference,
    build_stream,
    pack_audio,
    pack_video,
    shift_mu,
    shift_sigmas,
    unpack_audio,
    unpack_video,
)
from avctl.errors import BadInput, BadUsage
from avctl.forward import predict
from avctl.lora import LoraFile, load_lora, read_lora


# ------------------------------------------------------------------------------------------------ LoRA resolution
def parse_lora_arg(arg: str) -> tuple[str, float]:
    """`NAME_OR_PATH[@WEIGHT]`: the weight is split off the last '@' only when what follows parses as a number."""
    head, sep, tail = arg.rpartition("@")
    if sep and head:
        try:
            return head, float(tail)
        except ValueError:
            pass
    return arg, 1.0


def resolve_lora(name_or_path: str) -> Path:
    """An existing path, else ./runs/NAME/lora.safetensors, else $AVCTL_HOME/runs/NAME/lora.safetensors."""
    tried = [Path(name_or_path), Path("runs") / name_or_path / "lora.safetensors"]
    home = os.environ.get("AVCTL_HOME")
    if home:
        tried.append(Path(home) / "runs" / name_or_path / "lora.safetensors")
    for p in tried:
        if p.is_file():
            return p
    raise BadInput(f"LoRA {name_or_path!r} not found; tried: {', '.join(str(p) for p in tried)}")


# ------------------------------------------------------------------------------------------------ strength maps
def strength_tokens(
    grid: tuple[int, int, int],
    temporal: int,
    strength: float,
    strength_map: np.ndarray | None = None,
    ramp: tuple[float, float] | None = None,
) -> float | torch.Tensor:
    """Per-reference-token strengths [1, F'·h·w] for a reference latent grid (F', h, w), or the scalar itself when
    nothing varies (the fast path at 1.0).

    strength_map: grey [F, H, W] or [H, W] in [0, 1] (white = 1), area-averaged onto the latent grid; latent frame 0
    covers pixel frame 0 and latent frame k ≥ 1 covers pixel frames 8k−7 … 8k (the VAE's causal grouping).
    ramp (start, end): linear over latent frames, e.g. (1, 0) fades the reference out over time.
    """
    if strength_map is None and ramp is None:
        return float(strength)
    f, h, w = grid
    values = np.full((f, h, w), float(strength), np.float32)
    if strength_map is not None:
        m = strength_map.astype(np.float32)
        if m.ndim == 2:
            m = m[None]
        per_frame = np.stack([cv2.resize(x, (w, h), interpolation=cv2.INTER_AREA) for x in m])  # [F, h, w]
        latent = np.empty((f, h, w), np.float32)
        n = len(per_frame)
        for k in range(f):
            lo, hi = (0, 1) if k == 0 else (temporal * (k - 1) + 1, temporal * k + 1)
            chunk = per_frame[lo:hi] if lo < n else per_frame[-1:]  # a still image covers every frame
            latent[k] = chunk.mean(axis=0)
        values *= np.clip(latent, 0.0, 1.0)
    if ramp is not None:
        start, end = ramp
        steps = np.linspace(start, end, f, dtype=np.float32) if f > 1 else np.array([start], np.float32)
        values *= steps[:, None, None]
    if not (values.min() >= 0.0 and values.max() <= 1.0):
        raise BadUsage("strength values must lie in [0, 1] (above 1 copies the reference)")
    return torch.from_numpy(values.reshape(1, -1))


# ------------------------------------------------------------------------------------------------ generation
@dataclass
class LoraUse:
    """One LoRA in a generation: the file, its scale (the `@W`), and its control."""

    lora: LoraFile
    scale: float = 1.0
    control: np.ndarray | None = None  # [F, H, W, 3] uint8 video control (any size; resized here)
    control_audio: np.ndarray | None = None  # [2, N] float32 audio control at the backbone's mel rate

    @property
    def stream(self) -> str:
        return (self.lora.avctl.get("streams") or ["video"])[0]


@dataclass
class Generation:
    frames: np.ndarray  # [F, H, W, 3] uint8
    audio: np.ndarray  # [2, N] float32
    sample_rate: int
    fps: float
    timings: dict[str, float] = field(default_factory=dict)
    final_latents: dict[str, torch.Tensor] = field(default_factory=dict)


def resize_control(frames: np.ndarray, size: tuple[int, int], n_frames: int) -> np.ndarray:
    """Resize a control to (h, w) with INTER_AREA and check its length: longer controls are cut (with a note by
    the caller); shorter ones are an error, since inventing control frames would mislead."""
    h, w = size
    if frames.shape[0] < n_frames:
        raise BadInput(f"control has {frames.shape[0]} frames, the generation needs {n_frames}; pass --frames")
    frames = frames[:n_frames]
    if frames.shape[1:3] == (h, w):
        return frames
    return np.stack([cv2.resize(f, (w, h), interpolation=cv2.INTER_AREA) for f in frames])


def generate(
    backbone: Any,
    prompt: str,
    loras: list[LoraUse],
    *,
    width: int,
    height: int,
    frames: int,
    fps: float = 24.0,
    strength: float = 1.0,
    strength_map: np.ndarray | None = None,
    strength_ramp: tuple[float, float] | None = None,
    steps: int = 30,
    cfg: float = 1.0,
    seed: int = 42,
    negative_prompt: str = "",
    use_references: bool = True,
    progress: Any = None,
) -> Generation:
    """Generate video + audio from a prompt with control LoRAs. `use_references=False` runs the same LoRAs with no
    reference tokens at all (what strength 0 must equal)."""
    if not 0.0 <= strength <= 1.0:
        raise BadUsage(f"--strength {strength} is outside [0, 1] (above 1 copies the reference)")
    if steps < 1:
        raise BadUsage("--steps must be at least 1")
    t_start = time.perf_counter()
    device = backbone.device
    transformer = backbone.transformer
    grid = backbone.latent_grid(frames, height, width)
    duration = frames / fps
    audio_frames = backbone.audio_latent_frames(duration)

    # LoRAs: one named adapter each, scaled by @W.
    names = []
    for i, use in enumerate(loras):
        name = f"avctl_gen_{i}"
        if name in getattr(transformer, "peft_config", {}):
            transformer.delete_adapters(name)
        load_lora(transformer, use.lora, name)
        names.append(name)
    if names:
        transformer.set_adapters(names, weights=[u.scale for u in loras])

    # References: each LoRA's control at its own downscale, one group per LoRA.
    video_refs: list[Reference] = []
    audio_refs: list[Reference] = []
    if use_references:
        for group, use in enumerate(loras):
            s = use.lora.downscale
            if use.stream == "video":
                if use.control is None:
                    raise BadUsage(f"{use.lora.path.name}: needs a --control video")
                if height % (s * backbone.vae_spatial) or width % (s * backbone.vae_spatial):
                    raise BadUsage(
                        f"{use.lora.path.name} has reference downscale {s}: width and height must be multiples of "
                        f"{s * backbone.vae_spatial}"
                    )
                ctrl = resize_control(use.control, (height // s, width // s), frames)
                lat = backbone.encode_video(torch.from_numpy(np.ascontiguousarray(ctrl))[None].to(device))
                ref_grid = tuple(lat.shape[2:])
                w = strength_tokens(ref_grid, backbone.vae_temporal, strength, strength_map, strength_ramp)
                video_refs.append(Reference(lat, s, w, group))
            else:
                if use.control_audio is None:
                    raise BadUsage(f"{use.lora.path.name}: needs an audio --control")
                mel = backbone.waveform_to_mel(torch.from_numpy(use.control_audio)[None].to(device))
                lat = backbone.encode_audio(mel)[:, :, :audio_frames]
                if lat.shape[2] < audio_frames:
                    raise BadInput("the audio control is shorter than the generation")
                w = float(strength) if strength_ramp is None else torch.from_numpy(
                    np.linspace(*strength_ramp, audio_frames, dtype=np.float32)[None] * strength
                )
                audio_refs.append(Reference(lat, 1, w, group))

    text = backbone.encode_text([prompt])
    negative = backbone.encode_text([negative_prompt]) if cfg != 1.0 else None
    directions = {u.lora.avctl.get("strength_direction", "target") for u in loras}
    direction = "symmetric" if "symmetric" in directions else "target"

    gen = torch.Generator().manual_seed(seed)
    dtype = torch.float32
    c_video = transformer.config.in_channels
    x_video = torch.randn((1, c_video, *grid), generator=gen).to(device, dtype)
    mel_per_token = transformer.config.audio_in_channels // backbone.audio_latent_channels
    x_audio = torch.randn((1, backbone.audio_latent_channels, audio_frames, mel_per_token), generator=gen).to(
        device, dtype
    )
    sigmas = shift_sigmas(torch.linspace(1.0, 0.0, steps + 1), shift_mu(math.prod(grid)))
    t_prep = time.perf_counter()

    transformer.eval()
    with torch.no_grad():
        for i in range(steps):
            sigma = torch.full((1,), float(sigmas[i]), device=device)
            canvas = Canvas(
                build_stream("video", transformer, x_video, sigma, video_refs, fps=fps),
                build_stream("audio", transformer, x_audio, sigma, audio_refs),
                direction=direction,
            )
            v_pred, a_pred = predict(transformer, canvas, text.video, text.audio, text.mask)
            v_pred, a_pred = canvas.video.target(v_pred), canvas.audio.target(a_pred)
            if negative is not None:
                v_neg, a_neg = predict(transformer, canvas, negative.video, negative.audio, negative.mask)
                v_pred = canvas.video.target(v_neg) + cfg * (v_pred - canvas.video.target(v_neg))
                a_pred = canvas.audio.target(a_neg) + cfg * (a_pred - canvas.audio.target(a_neg))
            dt = float(sigmas[i + 1] - sigmas[i])
            x_video = unpack_video(pack_video(x_video) + dt * v_pred.float(), grid)
            x_audio = unpack_audio(pack_audio(x_audio) + dt * a_pred.float(), backbone.audio_latent_channels)
            if progress:
                progress(i + 1, steps)
    t_denoise = time.perf_counter()

    with torch.no_grad():
        video = backbone.decode_video(x_video)[0].cpu().numpy()
        wav = backbone.vocode(backbone.decode_audio(x_audio))[0].float().cpu().numpy()
    n_audio = round(duration * backbone.vocoder_sample_rate)
    wav = wav[:, :n_audio] if wav.shape[1] >= n_audio else np.pad(wav, ((0, 0), (0, n_audio - wav.shape[1])))
    if names:
        transformer.delete_adapters(names)
    t_end = time.perf_counter()
    return Generation(
        frames=video[:frames],
        audio=wav.astype(np.float32),
        sample_rate=backbone.vocoder_sample_rate,
        fps=fps,
        timings={
            "prepare_s": round(t_prep - t_start, 4),
            "denoise_s": round(t_denoise - t_prep, 4),
            "decode_s": round(t_end - t_denoise, 4),
            "total_s": round(t_end - t_start, 4),
        },
        final_latents={"video": x_video.cpu(), "audio": x_audio.cpu()},
    )


def open_lora(arg: str) -> tuple[LoraFile, float]:
    name, scale = parse_lora_arg(arg)
    return read_lora(resolve_lora(name)), scale
