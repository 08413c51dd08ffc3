"""The latent cache: each sample is decoded once, VAE/text-encoded once, and trained from safetensors after that.

Layout: `DATASET/.precomputed/avctl/<model key>/<sample>.safetensors` (ltx-trainer's own `.precomputed/` folders are
left alone). Every file carries a key — a hash of the model's config, its encoders' weights, the bucket, the media
bytes and the caption — in its header, so a stale entry (another model or checkpoint, a re-prepared clip, an edited
caption) is re-encoded, never reused.

Memory: freshness is read from the headers alone, and the encoders' fingerprint from their files on disk
(`weights_fingerprint`), so a complete cache never loads an encoder. When entries are missing, `precompute` loads
ONLY the encoders, fills the cache and releases them before training loads the transformer. Tensors are stored
in bf16 (fps in float64) and `CachedSamples` reads one file per item, so RAM does not grow with the dataset.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import hashlib
import json
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from avctl.io import save_safetensors


@dataclass
class Sample:
    """One cached training sample: normalised latents and text embeddings."""

    video: torch.Tensor  # [C, F, H, W]
    audio: torch.Tensor  # [C, T, M]
    reference: torch.Tensor  # [C, F, h, w] video reference or [C, T, M] audio reference
    text_video: torch.Tensor  # [L, Cv]
    text_audio: torch.Tensor  # [L, Ca]
    text_mask: torch.Tensor  # [L]
    fps: float

CACHE_FORMAT = "avctl-latents-2"  # 2: bf16 tensors, fps float64, encoder fingerprint from the files on disk
PREFETCH = 2  # rows decoded ahead of the encoder
STORE_DTYPE = torch.bfloat16
EXACT = ("fps",)  # stored exactly (float64), not in bf16
ENCODERS = ("vae", "audio_vae", "text_encoder", "connectors")  # the parts whose outputs the cache holds
TEXT_COMPONENTS = frozenset({"text_encoder", "connectors", "tokenizer"})  # `precompute` loads these first,
MEDIA_COMPONENTS = frozenset({"vae", "audio_vae"})  # then these, never both at once
ENCODER_COMPONENTS = TEXT_COMPONENTS | MEDIA_COMPONENTS
_SAMPLED_BLOCKS = 64  # blocks read from each weight file for its fingerprint
_BLOCK = 4096


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _weight_file_digest(path: Path) -> str:
    """Name, size, the safetensors header (names, shapes, dtypes, offsets) and 64 blocks of 4 KiB spread over the
    data: two checkpoints of one architecture share the header but virtually never all of those bytes, and a 23 GB
    text encoder costs 64 reads, not a load."""
    h = hashlib.sha256()
    size = path.stat().st_size
    h.update(f"{path.name}\0{size}\0".encode())
    with path.open("rb") as f:
        start = 0
        if path.suffix == ".safetensors" and size >= 8:
            header_len = int.from_bytes(f.read(8), "little")
            h.update(f.read(min(header_len, size - 8)))
            start = 8 + header_len
        span = max(0, size - start)
        for k in range(_SAMPLED_BLOCKS):
            f.seek(start + span * k // _SAMPLED_BLOCKS)
            h.update(f.read(_BLOCK))
    return h.hexdigest()


def _model_directory(model_id: str) -> Path | None:
    """The folder a model's weights are read from, or None for a preset built by code (tiny, shape...)."""
    from avctl.backbone import POCKET, POCKET_DIR, _locate

    if model_id == POCKET:
        return POCKET_DIR
    path = Path(model_id).expanduser()
    if path.is_dir():
        return path
    if "/" not in model_id:  # a built-in preset name, never a hub id (those are owner/name)
        return None
    return _locate(model_id)[0]


def weights_fingerprint(model_id: str) -> str:
    """A hash of the encoders' WEIGHTS without loading them (the config hash alone would reuse latents made by
    another checkpoint of the same architecture). A directory model: every weight file of the encoder folders
    (`_weight_file_digest`). A preset built by code (tiny, shape): its name and the versions of the code that
    draws its seeded weights (its config is in the cache key already)."""
    h = hashlib.sha256()
    directory = _model_directory(model_id)
    if directory is None:
        import diffusers
        import transformers

        from avctl import __version__

        versions = (__version__, torch.__version__, diffusers.__version__, transformers.__version__)
        h.update("\0".join(("preset", model_id, *versions)).encode())
        return h.hexdigest()[:16]
    for name in ENCODERS:
        folder = directory / name
        if not folder.is_dir():
            continue
        h.update(name.encode())
        for file in sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in (".safetensors", ".bin")):
            h.update(_weight_file_digest(file).encode())
    return h.hexdigest()[:16]


def sample_key(backbone: Any, bucket: str, media: list[Path], caption: str, weights: str) -> str:
    """The cache key of one row: format, model config, encoder weights (`weights_fingerprint`, computed once per
    dataset by the caller), how the encoders run (VAE tiling, an 8-bit text encoder: both change the outputs a
    little), bucket, caption and the media bytes."""
    h = hashlib.sha256()
    tiling, te8 = getattr(backbone, "vae_tiling", ""), getattr(backbone, "text_encoder_8bit", False)
    encoding = f"{tiling!r} text_encoder_8bit={te8}"
    for part in (CACHE_FORMAT, backbone.config_hash(), weights, encoding, bucket, caption,
                 *[_file_digest(p) for p in media]):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()[:32]


def cache_dir(dataset: Path, backbone: Any) -> Path:
    return Path(dataset) / ".precomputed" / "avctl" / backbone.config_hash()


def _header_key(path: Path) -> str | None:
    """The key in a cache file's header (the tensors are not read), None for a missing or foreign file."""
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), "pt") as f:
            return (f.metadata() or {}).get("key")
    except Exception:  # a torn or foreign file is simply re-encoded
        return None


def to_stored(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The cache's form: bf16 on CPU, fps exact."""
    return {k: v.detach().to("cpu", torch.float64 if k in EXACT else STORE_DTYPE).contiguous()
            for k, v in tensors.items()}


def sample_from_tensors(tensors: dict[str, torch.Tensor]) -> Sample:
    return Sample(
        video=tensors["video"],
        audio=tensors["audio"],
        reference=tensors["reference"],
        text_video=tensors["text_video"],
        text_audio=tensors["text_audio"],
        text_mask=tensors["text_mask"],
        fps=float(tensors["fps"]),
    )


class CachedSamples(torch.utils.data.Dataset):
    """The cached samples of a dataset, read from disk one file per item (bf16, as stored): only the file paths
    stay in memory."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths = [Path(p) for p in paths]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Sample:
        return sample_from_tensors(load_file(str(self.paths[index])))


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
    model, so `fill_cache` runs it for the next rows while the current one is being encoded."""
    from avctl import media
    from avctl.audio import fit_length

    video_path = dataset / row["video"]
    clip = media.read_video(video_path)
    n_samples = round(clip.frames.shape[0] / clip.fps * sample_rate)
    audio = row.get("audio")
    wav = media.read_audio(dataset / audio if audio else video_path, sample_rate, channels=2)
    wav = np.zeros((2, n_samples), np.float32) if wav is None else fit_length(wav, n_samples)
    out = SampleMedia(frames=np.ascontiguousarray(clip.frames), fps=float(clip.fps), wav=wav)
    if row.get("reference_video"):
        out.reference_frames = np.ascontiguousarray(media.read_video(dataset / row["reference_video"]).frames)
    elif row.get("reference_audio"):
        ref_wav = media.read_audio(dataset / row["reference_audio"], sample_rate, channels=2)
        out.reference_wav = fit_length(ref_wav, n_samples)
    return out


def encode_caption(backbone: Any, caption: str) -> dict[str, torch.Tensor]:
    """A caption's text embeddings in the cache's stored form (`text_video`, `text_audio`, `text_mask`)."""
    text = backbone.encode_text([caption])
    return to_stored({"text_video": text.video[0], "text_audio": text.audio[0], "text_mask": text.mask[0]})


def encode_media(
    backbone: Any, decoded: SampleMedia, caption: str, text: dict[str, torch.Tensor] | None = None
) -> dict[str, torch.Tensor]:
    """VAE- and text-encode one row's decoded media: target video, its audio, the reference and the caption (or
    take the caption's `encode_caption` output as given), in the cache's stored form (`to_stored`)."""
    out = {"video": backbone.encode_video(torch.from_numpy(decoded.frames)[None])[0]}
    out["audio"] = backbone.encode_audio(backbone.waveform_to_mel(torch.from_numpy(decoded.wav)[None]))[0]
    if decoded.reference_frames is not None:
        out["reference"] = backbone.encode_video(torch.from_numpy(decoded.reference_frames)[None])[0]
    elif decoded.reference_wav is not None:
        ref_mel = backbone.waveform_to_mel(torch.from_numpy(decoded.reference_wav)[None])
        out["reference"] = backbone.encode_audio(ref_mel)[0]
    out.update(text if text is not None else encode_caption(backbone, caption))
    out["fps"] = torch.tensor(decoded.fps, dtype=torch.float64)
    return to_stored(out)


def encode_sample(backbone: Any, dataset: Path, row: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Decode and encode one manifest row: target video, its audio (silence when the clip has none), the
    reference (video or audio) and the caption."""
    with torch.no_grad():
        decoded = read_sample_media(Path(dataset), row, backbone.audio_sample_rate)
        return encode_media(backbone, decoded, row.get("caption", ""))


@dataclass
class CacheIndex:
    """Where each row's cache file is and the key it must carry; `stale` lists the rows to encode."""

    dataset: Path
    rows: list[dict[str, Any]]
    paths: list[Path]
    keys: list[str]
    weights: str
    stale: list[int] = field(default_factory=list)

    def samples(self) -> CachedSamples:
        return CachedSamples(self.paths)


def cache_file_name(video: str) -> str:
    """A row's cache file: named by a hash of its video path, so it always lies in the cache folder, whatever the
    path (absolute, `../` with --allow-outside-media), and never beside the media. Its header's key decides
    freshness."""
    return hashlib.sha256(str(video).encode()).hexdigest()[:32] + ".safetensors"


def cache_index(backbone: Any, dataset: Path, info: dict[str, Any], rows: list[dict[str, Any]]) -> CacheIndex:
    """Keys and paths of every row and which are stale, from the file headers and the encoder files on disk: no
    encoder is loaded (`backbone` may hold no part at all, only the configs)."""
    dataset = Path(dataset)
    folder = cache_dir(dataset, backbone)
    weights = weights_fingerprint(backbone.model_id)
    keys, paths = [], []
    for row in rows:
        media_files = [dataset / row[c] for c in ("video", "reference_video", "reference_audio", "audio") if row.get(c)]
        keys.append(sample_key(backbone, str(info.get("bucket", "")), media_files, row.get("caption", ""), weights))
        paths.append(folder / cache_file_name(row["video"]))
    stale = [i for i, (path, key) in enumerate(zip(paths, keys, strict=True)) if _header_key(path) != key]
    return CacheIndex(dataset, list(rows), paths, keys, weights, stale)


def _text_part(path: Path) -> Path:
    return path.with_name(f".{path.stem}.text.safetensors")


def fill_text(encoders: Any, index: CacheIndex) -> None:
    """The text half of precomputing: each stale row's caption embeddings, written beside its entry (keyed like it)
    for `fill_cache` to complete with the VAEs' latents."""
    for i in index.stale:
        part = _text_part(index.paths[i])
        if _header_key(part) != index.keys[i]:
            with torch.no_grad():
                tensors = encode_caption(encoders, index.rows[i].get("caption", ""))
            save_safetensors(tensors, part, {"key": index.keys[i], "format": CACHE_FORMAT})


def fill_cache(
    encoders: Any, index: CacheIndex, progress: Callable[[int, int], None] | None = None, text_parts: bool = False
) -> int:
    """Encode the stale rows with `encoders` (a backbone holding the encoders) and write their files. Returns how
    many were encoded. With `text_parts`, the captions' embeddings are read from `fill_text`'s files instead (the
    text encoder is not loaded).

    The rows are decoded ahead (`PREFETCH` rows, in threads: ffmpeg runs as its own process) while the model
    encodes the current one; decoding was about half of each sample's time on CPU. A bad row stops the run; the
    rows before it stay cached."""
    encoded = 0
    total = len(index.rows)
    stale = set(index.stale)
    with ThreadPoolExecutor(max_workers=PREFETCH) as pool:
        pending: dict[int, Future[SampleMedia]] = {}
        ahead = iter(index.stale)  # the stale rows in order, each submitted once

        def submit_ahead() -> None:
            while len(pending) <= PREFETCH:
                j = next(ahead, None)
                if j is None:
                    return
                pending[j] = pool.submit(read_sample_media, index.dataset, index.rows[j], encoders.audio_sample_rate)

        try:
            for i, row in enumerate(index.rows):
                if i in stale:
                    submit_ahead()
                    decoded = pending.pop(i).result()
                    text = load_file(str(_text_part(index.paths[i]))) if text_parts else None
                    with torch.no_grad():
                        tensors = encode_media(encoders, decoded, row.get("caption", ""), text)
                    save_safetensors(tensors, index.paths[i], {"key": index.keys[i], "format": CACHE_FORMAT})
                    _text_part(index.paths[i]).unlink(missing_ok=True)
                    del tensors, decoded, text
                    encoded += 1
                if progress:
                    progress(i + 1, total)
        finally:
            for future in pending.values():  # a bad row stops the run: do not decode the rest
                future.cancel()
    index.stale = []
    return encoded


# ------------------------------------------------------------------------------------------------ prompts
def _prompt_path(index: CacheIndex, backbone: Any, prompt: str) -> tuple[Path, str]:
    h = hashlib.sha256()
    for part in (CACHE_FORMAT, backbone.config_hash(), index.weights, "prompt", prompt):
        h.update(part.encode())
        h.update(b"\0")
    key = h.hexdigest()[:32]
    return cache_dir(index.dataset, backbone) / "prompts" / f"{key}.safetensors", key


def cached_prompt(index: CacheIndex, backbone: Any, prompt: str) -> dict[str, torch.Tensor] | None:
    """A prompt's text embeddings (`video`, `audio`, `mask`, batch 1, as encode_text gave them) when cached."""
    path, key = _prompt_path(index, backbone, prompt)
    return load_file(str(path)) if _header_key(path) == key else None


def cache_prompt(index: CacheIndex, encoders: Any, prompt: str) -> None:
    """Text-encode a prompt (the validation sample's) into the cache, in the encoder's own dtype."""
    path, key = _prompt_path(index, encoders, prompt)
    with torch.no_grad():
        text = encoders.encode_text([prompt])
    tensors = {"video": text.video, "audio": text.audio, "mask": text.mask}
    save_safetensors({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, path,
                            {"key": key, "format": CACHE_FORMAT, "prompt": json.dumps(prompt)})


# ------------------------------------------------------------------------------------------------ precompute
def release() -> None:
    """Give freed model memory back: collect cycles, empty CUDA's cache, and trim glibc's heap (many tensors under
    its 32 MB mmap threshold are freed into the heap and would otherwise stay in the process's RSS)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to trim
        ctypes.CDLL("libc.so.6").malloc_trim(0)


@dataclass
class Precomputed:
    index: CacheIndex
    encoded: int
    encoders_loaded: bool


def precompute(
    backbone: Any,
    dataset: Path,
    info: dict[str, Any],
    rows: list[dict[str, Any]],
    load: Callable[[frozenset[str]], Any],
    prompts: tuple[str, ...] = (),
    progress: Callable[[int, int], None] | None = None,
) -> Precomputed:
    """Fill the cache (and the text embeddings of `prompts`) for `backbone` — a backbone of configs only is enough.
    Encoders are loaded through `load(components)` ONLY when something is missing: first the text encoder with its
    connectors (`TEXT_COMPONENTS`), then, once those are released, the VAEs (`MEDIA_COMPONENTS`), so the peak is
    the larger of the two, not their sum. Everything is released before this returns, so what runs next
    (training) starts without them."""
    index = cache_index(backbone, dataset, info, rows)
    missing_prompts = [p for p in dict.fromkeys(prompts) if cached_prompt(index, backbone, p) is None]
    if not index.stale and not missing_prompts:
        if progress:
            progress(len(rows), len(rows))
        return Precomputed(index, 0, False)
    encoders = load(TEXT_COMPONENTS)
    try:
        fill_text(encoders, index)
        for prompt in missing_prompts:
            cache_prompt(index, encoders, prompt)
    finally:
        del encoders  # the only reference when `load` made them
        release()
    encoded = 0
    if index.stale:
        encoders = load(MEDIA_COMPONENTS)
        try:
            encoded = fill_cache(encoders, index, progress, text_parts=True)
        finally:
            del encoders
            release()
    return Precomputed(index, encoded, True)


def wait_for_cache(
    backbone: Any,
    dataset: Path,
    info: dict[str, Any],
    rows: list[dict[str, Any]],
    poll_s: float = 2.0,
) -> CacheIndex:
    """For the ranks other than 0 of a multi-rank `train`: wait until rank 0's precompute has filled the cache, by
    reading the cache files' headers every `poll_s` seconds — no process group, so no collective timeout, however
    long the encoding. (Rank 0's failure ends the run: the launcher stops every rank.)"""
    while True:
        index = cache_index(backbone, dataset, info, rows)
        if not index.stale:
            return index
        time.sleep(poll_s)


def load_samples(
    backbone: Any,
    dataset: Path,
    info: dict[str, Any],
    rows: list[dict[str, Any]],
    progress: Callable[[int, int], None] | None = None,
) -> tuple[list[Sample], int]:
    """All samples of a prepared dataset IN MEMORY (for small datasets and scripts; `avctl train` streams them),
    from the cache where it is fresh, encoding the rest with `backbone`'s own encoders. Returns the samples and
    how many were encoded now."""
    index = cache_index(backbone, dataset, info, rows)
    encoded = fill_cache(backbone, index, progress)
    samples = index.samples()
    return [samples[i] for i in range(len(samples))], encoded
