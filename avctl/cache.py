"""The latent cache: each sample is decoded once, VAE/text-encoded once, and trained from safetensors after that.

Layout: `DATASET/.precomputed/avctl/<model key>/<sample>.safetensors` (ltx-trainer's own `.precomputed/` folders are
left alone). Every file carries a key — a hash of the model's config, its encoders' weights, the bucket, the media
bytes and the caption — in its header, so a stale entry (another model or checkpoint, a re-prepared clip, an edited
caption) is re-encoded, never reused.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from avctl.io import contained
from avctl.lora import atomic_save_safetensors
from avctl.train import Sample

CACHE_FORMAT = "avctl-latents-1"
PREFETCH = 2  # rows decoded ahead of the encoder


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


ENCODERS = ("vae", "audio_vae", "text_encoder", "connectors")  # the parts whose outputs the cache holds


def encoder_fingerprint(backbone: Any) -> str:
    """A hash of the encoders' WEIGHTS (the config hash alone would reuse latents made by another checkpoint of the
    same architecture): every tensor's name, shape and dtype, and 64 values spread across it. Cheap even for a 12B
    text encoder, and two different checkpoints virtually never agree on all of them."""
    h = hashlib.sha256()
    for name in ENCODERS:
        module = getattr(backbone, name, None)
        if module is None:
            continue
        h.update(name.encode())
        for key, tensor in [*module.named_parameters(), *module.named_buffers()]:
            flat = tensor.detach().reshape(-1)
            picked = flat[:: max(1, flat.numel() // 64)][:64].to("cpu", torch.float32)
            h.update(f"{key}{tuple(tensor.shape)}{tensor.dtype}".encode())
            h.update(picked.numpy().tobytes())
    return h.hexdigest()[:16]


def sample_key(backbone: Any, bucket: str, media: list[Path], caption: str, weights: str) -> str:
    """The cache key of one row: format, model config, encoder weights (`encoder_fingerprint`, computed once per
    dataset by the caller), bucket, caption and the media bytes."""
    h = hashlib.sha256()
    for part in (CACHE_FORMAT, backbone.config_hash(), weights, bucket, caption, *[_file_digest(p) for p in media]):
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


@dataclass
class SampleMedia:
    """One manifest row's decoded media, ready for the encoders (what `read_sample_media` reads)."""

    frames: np.ndarray  # [F, H, W, 3] uint8
    fps: float
    wav: np.ndarray  # [2, n] float32 at the backbone's audio rate, the clip's duration (silence when it has none)
    reference_frames: np.ndarray | None = None
    reference_wav: np.ndarray | None = None


def read_sample_media(dataset: Path, row: dict[str, Any], sample_rate: int) -> SampleMedia:
    """Decode one manifest row's target video, its audio and its reference (video or audio). Only ffmpeg work, no
    model, so `load_samples` runs it for the next rows while the current one is being encoded."""
    from avctl import media

    video_path = dataset / row["video"]
    clip = media.read_video(video_path)
    n_samples = round(clip.frames.shape[0] / clip.fps * sample_rate)
    audio = row.get("audio")
    wav = media.read_audio(dataset / audio if audio else video_path, sample_rate, channels=2)
    wav = np.zeros((2, n_samples), np.float32) if wav is None else _fit_length(wav, n_samples)
    out = SampleMedia(frames=np.ascontiguousarray(clip.frames), fps=float(clip.fps), wav=wav)
    if row.get("reference_video"):
        out.reference_frames = np.ascontiguousarray(media.read_video(dataset / row["reference_video"]).frames)
    elif row.get("reference_audio"):
        ref_wav = media.read_audio(dataset / row["reference_audio"], sample_rate, channels=2)
        out.reference_wav = _fit_length(ref_wav, n_samples)
    return out


def encode_media(backbone: Any, decoded: SampleMedia, caption: str) -> dict[str, torch.Tensor]:
    """VAE- and text-encode one row's decoded media: target video, its audio, the reference and the caption."""
    out = {"video": backbone.encode_video(torch.from_numpy(decoded.frames)[None])[0]}
    out["audio"] = backbone.encode_audio(backbone.waveform_to_mel(torch.from_numpy(decoded.wav)[None]))[0]
    if decoded.reference_frames is not None:
        out["reference"] = backbone.encode_video(torch.from_numpy(decoded.reference_frames)[None])[0]
    elif decoded.reference_wav is not None:
        ref_mel = backbone.waveform_to_mel(torch.from_numpy(decoded.reference_wav)[None])
        out["reference"] = backbone.encode_audio(ref_mel)[0]
    text = backbone.encode_text([caption])
    out["text_video"], out["text_audio"], out["text_mask"] = text.video[0], text.audio[0], text.mask[0]
    out["fps"] = torch.tensor(decoded.fps)
    return {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in out.items()}


def encode_sample(backbone: Any, dataset: Path, row: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Decode and encode one manifest row: target video, its audio (silence when the clip has none), the
    reference (video or audio) and the caption."""
    with torch.no_grad():
        decoded = read_sample_media(Path(dataset), row, backbone.audio_sample_rate)
        return encode_media(backbone, decoded, row.get("caption", ""))


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
    Returns the samples and how many were encoded now.

    The rows to encode are decoded ahead (`PREFETCH` rows, in threads: ffmpeg runs as its own process) while the
    model encodes the current one; decoding was about half of each sample's time on CPU."""
    dataset = Path(dataset)
    folder = cache_dir(dataset, backbone)
    weights = encoder_fingerprint(backbone)
    keys, paths = [], []
    for row in rows:
        media_files = [dataset / row[c] for c in ("video", "reference_video", "reference_audio", "audio") if row.get(c)]
        keys.append(sample_key(backbone, str(info.get("bucket", "")), media_files, row.get("caption", ""), weights))
        paths.append(contained(Path(row["video"]).with_suffix(".safetensors"), folder, what="cache file",
                               hint="name the row's video with a path inside the dataset"))
    cached = [_read_cached(path, key) for path, key in zip(paths, keys, strict=True)]
    stale = [i for i, tensors in enumerate(cached) if tensors is None]
    samples, encoded = [], 0
    with ThreadPoolExecutor(max_workers=PREFETCH) as pool:
        pending: dict[int, Future[SampleMedia]] = {}
        ahead = iter(stale)  # the stale rows in order, each submitted once

        def submit_ahead() -> None:
            while len(pending) <= PREFETCH:
                j = next(ahead, None)
                if j is None:
                    return
                pending[j] = pool.submit(read_sample_media, dataset, rows[j], backbone.audio_sample_rate)

        try:
            for i, row in enumerate(rows):
                tensors = cached[i]
                if tensors is None:
                    submit_ahead()
                    decoded = pending.pop(i).result()
                    with torch.no_grad():
                        tensors = encode_media(backbone, decoded, row.get("caption", ""))
                    atomic_save_safetensors(tensors, paths[i], {"key": keys[i], "format": CACHE_FORMAT})
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
        finally:
            for future in pending.values():  # a bad row stops the run: do not decode the rest
                future.cancel()
    return samples, encoded
