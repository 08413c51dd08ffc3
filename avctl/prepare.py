"""`avctl prepare`: videos → a training dataset for one modality (layout in `avctl.dataset`).

Per clip: decode the first F frames, fit them to the bucket (resize keeping aspect, centre-crop), run the modality's
extractor, write the target (with the source's audio trimmed to the clip), the lossless reference and, for masked
controls, the mask; then rewrite the manifest. Bad clips are skipped with a one-line reason. Rerunning resumes:
rows whose files exist are kept. With `workers > 1` clips are spread over a spawn-started process pool, one extractor
per worker; every random choice is keyed by (clip, seed), so the dataset does not depend on the worker count.

Paired modalities (local-edit, cut-on-action, camera-video) take a pairs manifest instead of videos: a `.jsonl` file
with one `{"source": PATH, "target": PATH, "caption"?: TEXT}` per line, or a `.csv` file with `source,target[,caption]`
columns, paths relative to the manifest. The target becomes `video/<rel>.mp4`, the source the lossless reference
`reference/<rel>.mp4` (at bucket ÷ downscale); both are fitted to the bucket the same way and cut to the same first F
frames.

Extractor factories that take `weights` / `backend` keyword arguments get `--weights` / `--backend`; the weights are
looked up as `--weights DIR`, then `$AVCTL_HOME/weights/<backend>`, then (left to the extractor) the hub cache.
"""

from __future__ import annotations

import csv
import json
import multiprocessing
import os
import time
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from avctl import __version__
from avctl.audio import fit_length
from avctl.dataset import (
    INFO,
    VAE_SPATIAL,
    VAE_TEMPORAL,
    default_bucket,
    read_info,
    read_rows,
    remove_stale_temp_files,
    row_files,
    write_manifest,
)
from avctl.errors import AvctlError, BadInput, BadUsage
from avctl.extractors import build_extractor
from avctl.io import WriteError, atomic_write_json, folder_lock
from avctl.media import Bucket, VideoClip, fit_to_bucket, read_audio, read_video, write_video, write_wav
from avctl.modalities.base import Clip, Control, Extractor, Modality

VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".webm", ".avi")
# Media found in an input folder that prepare does not take: listed as skipped, never dropped without a word.
AUDIO_EXTENSIONS = (".wav", ".mp3", ".flac", ".m4a", ".aac", ".ogg", ".opus")
PAIRS_EXTENSIONS = (".jsonl", ".csv")
# avctl.json's extractor identity for datasets made from a pairs manifest (no extractor runs).
PAIRS_IDENTITY = {"backend": "pairs-manifest", "version": "1 (source → reference, target → video, same frames)"}
# Target audio is kept at 48 kHz stereo (LTX-2's audio is stereo; the VAE front end resamples to 16 kHz itself).
AUDIO_SAMPLE_RATE = 48_000
AUDIO_CHANNELS = 2
# avctl.json fields that must match for a rerun to add to an existing dataset.
_COMPATIBLE_FIELDS = ("modality", "bucket", "downscale", "extractor", "seed")
__all__ = ["AUDIO_SAMPLE_RATE", "PrepareSummary", "Source", "caption_for", "default_bucket", "encode_dataset",
           "find_pairs", "find_sources", "prepare", "prepare_throughput"]


@dataclass
class PrepareSummary:
    """What one `prepare` run did. `rows` is the manifest's size afterwards; 0 means nothing usable exists."""

    out: Path
    modality: str
    bucket: str
    done: list[str] = field(default_factory=list)  # sample ids (relative paths without extension) made now
    existing: list[str] = field(default_factory=list)  # prepared by an earlier run, left as they were
    skipped: list[dict[str, str]] = field(default_factory=list)  # {"clip", "reason"}: unusable input
    failed: list[dict[str, str]] = field(default_factory=list)  # {"clip", "reason"}: extractor or write errors
    rows: int = 0
    # Frames extracted per second of extractor time (per worker) in this run; None when no extractor ran.
    frames_per_s: float | None = None
    inputs: int = 0  # videos (or manifest pairs) found, skipped ones included
    # What this run's controls were made from (`Control.notes`): note → value → clips,
    # e.g. {"depth": {"world truth": 2}}
    made_from: dict[str, dict[str, int]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "out": str(self.out),
            "modality": self.modality,
            "bucket": self.bucket,
            "rows": self.rows,
            "done": list(self.done),
            "existing": list(self.existing),
            "skipped": [dict(item) for item in self.skipped],
            "failed": [dict(item) for item in self.failed],
            "frames_per_s": self.frames_per_s,
            "inputs": self.inputs,
            "made_from": {k: dict(v) for k, v in self.made_from.items()},
        }


@dataclass(frozen=True)
class Source:
    """One input video. `rel` (relative path without extension) names its outputs; `key` seeds its randomness.
    For a pair, `path` is the target and `reference` the source video; `caption` the manifest's caption, if any."""

    path: Path
    rel: str
    key: str
    reference: Path | None = None
    caption: str | None = None


@dataclass(frozen=True)
class _Job:
    source: str
    rel: str
    key: str
    caption: str
    reference_source: str | None = None  # pairs: the source video that becomes the reference


@dataclass(frozen=True)
class _Settings:
    out: str
    bucket: Bucket
    downscale: int
    seed: int
    pairs: bool = False  # ready-made pairs from a manifest: no extractor runs


# ---------------------------------------------------------------------------------------------------------- inputs
def _is_hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def find_sources(inputs: Iterable[str | Path], out: Path | None = None) -> tuple[list[Source], list[dict[str, str]]]:
    """Video files from files and folders (recursive; mp4/mov/mkv/webm/avi, hidden files and `out` left out).
    Relative paths are taken from the deepest folder common to all inputs, so `a/x.mp4` and `b/x.mp4` stay apart.
    Returns (sources sorted by rel, skipped name clashes)."""
    out_abs = Path(os.path.abspath(out)) if out is not None else None
    roots: list[Path] = []
    candidates: list[Path] = []
    not_videos: list[Path] = []
    for given in inputs:
        path = Path(os.path.abspath(given))
        if not path.exists():
            raise BadInput(f"{given}: no such file or folder")
        if path.is_dir():
            roots.append(path)
            for found in sorted(path.rglob("*")):
                if not found.is_file() or _is_hidden(found, path):
                    continue
                if found.suffix.lower() in AUDIO_EXTENSIONS:
                    not_videos.append(found)
                if found.suffix.lower() not in VIDEO_EXTENSIONS:
                    continue
                if out_abs is not None and found.is_relative_to(out_abs):
                    continue  # our own outputs, when --out lies inside an input folder
                candidates.append(found)
        else:
            roots.append(path.parent)
            candidates.append(path)
    if not candidates:
        names = ", ".join(str(p) for p in inputs) or "(no inputs)"
        audio = f" (found {len(not_videos)} audio files, e.g. {not_videos[0].name}: prepare takes videos)" \
            if not_videos else ""
        raise BadInput(f"no videos found in {names}; looked for {', '.join('*' + e for e in VIDEO_EXTENSIONS)}"
                       f"{audio}")

    common = Path(os.path.commonpath([str(root) for root in roots]))
    by_rel: dict[str, Source] = {}
    skipped: list[dict[str, str]] = [
        {"clip": found.relative_to(common).as_posix() if found.is_relative_to(common) else str(found),
         "reason": f"{found}: an audio file; prepare takes videos ({', '.join(VIDEO_EXTENSIONS)}) — give the "
                   "video it belongs to"}
        for found in not_videos]
    for path in sorted(set(candidates)):
        relative = path.relative_to(common)
        rel = relative.with_suffix("").as_posix()
        if rel in by_rel:
            skipped.append({"clip": relative.as_posix(),
                            "reason": f"{path}: same name as {by_rel[rel].path} once the extension is dropped; "
                                      "rename one of them"})
            continue
        by_rel[rel] = Source(path=path, rel=rel, key=relative.as_posix())
    return sorted(by_rel.values(), key=lambda s: s.rel), skipped


def caption_for(video: Path, fallback: str | None) -> str:
    """The sidecar `<stem>.txt` next to the video, else `fallback`, else ""."""
    sidecar = video.with_suffix(".txt")
    if sidecar.is_file():
        try:
            return sidecar.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise BadInput(f"{sidecar}: unreadable caption ({exc}); save it as UTF-8 text") from exc
    return (fallback or "").strip()


def is_pairs_manifest(path: str | Path) -> bool:
    return Path(path).suffix.lower() in PAIRS_EXTENSIONS


def _manifest_entries(manifest: Path) -> list[tuple[str, dict[str, Any] | str]]:
    """(line label, entry or the reason it is unusable) for each row of a .jsonl / .csv pairs manifest."""
    try:
        text = manifest.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInput(f"{manifest}: unreadable pairs manifest ({exc}); save it as UTF-8 text") from exc
    entries: list[tuple[str, dict[str, Any] | str]] = []
    if manifest.suffix.lower() == ".csv":
        reader = csv.DictReader(text.splitlines())
        columns = [name.strip() for name in reader.fieldnames or []]
        if "source" not in columns or "target" not in columns:
            raise BadInput(f"{manifest}: a pairs CSV needs a header row with 'source' and 'target' columns (and "
                           f"optionally 'caption'); found {columns or 'no header'}")
        for number, record in enumerate(reader, start=2):  # line 1 is the header
            entry = {(key or "").strip(): value for key, value in record.items()}
            entries.append((f"{manifest.name}:{number}", entry))
        return entries
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        label = f"{manifest.name}:{number}"
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as exc:
            entries.append((label, f"{manifest}:{number}: not valid JSON ({exc.msg}); fix or delete the line"))
            continue
        entries.append((label, entry if isinstance(entry, dict) else
                        f"{manifest}:{number}: not a JSON object; write {{\"source\": ..., \"target\": ...}}"))
    return entries


def find_pairs(manifests: Iterable[str | Path]) -> tuple[list[Source], list[dict[str, str]]]:
    """Pairs from .jsonl / .csv manifests: `source` and `target` paths relative to the manifest (absolute ones kept),
    optional `caption`. A pair is named by its target's path relative to the manifest's folder, without extension.
    Returns (pairs sorted by rel, skipped rows with a reason): a row with a missing or unreadable field, a file that
    does not exist, a target outside the manifest's folder or a target named twice."""
    by_rel: dict[str, Source] = {}
    skipped: list[dict[str, str]] = []
    for given in manifests:
        manifest = Path(os.path.abspath(given))
        if not manifest.is_file():
            raise BadInput(f"{given}: no such pairs manifest")
        root = manifest.parent
        for label, entry in _manifest_entries(manifest):
            where = f"{manifest}:{label.rsplit(':', 1)[1]}"
            if isinstance(entry, str):
                skipped.append({"clip": label, "reason": entry})
                continue
            fields = {name: entry.get(name) for name in ("source", "target")}
            bad = [name for name, value in fields.items() if not isinstance(value, str) or not value.strip()]
            if bad:
                skipped.append({"clip": label, "reason": f"{where}: no {' or '.join(bad)} path; give both "
                                                          "'source' and 'target'"})
                continue
            caption = entry.get("caption")
            if caption is not None and not isinstance(caption, str):
                skipped.append({"clip": label, "reason": f"{where}: 'caption' must be text"})
                continue
            source = Path(os.path.abspath(root / str(fields["source"]).strip()))
            target = Path(os.path.abspath(root / str(fields["target"]).strip()))
            missing = [path for path in (source, target) if not path.is_file()]
            if missing:
                skipped.append({"clip": label, "reason": f"{where}: {missing[0]} does not exist; fix the path "
                                                          "(relative to the manifest)"})
                continue
            if not target.is_relative_to(root):
                skipped.append({"clip": label, "reason": f"{where}: target {target} lies outside {root}; keep "
                                                          "targets under the manifest's folder so their names are "
                                                          "stable"})
                continue
            relative = target.relative_to(root)
            rel = relative.with_suffix("").as_posix()
            if rel in by_rel:
                skipped.append({"clip": label, "reason": f"{where}: target {relative.as_posix()} is already paired "
                                                          f"with {by_rel[rel].reference}; keep one row per target"})
                continue
            text = caption.strip() if isinstance(caption, str) and caption.strip() else None
            by_rel[rel] = Source(path=target, rel=rel, key=relative.as_posix(), reference=source, caption=text)
    return sorted(by_rel.values(), key=lambda s: s.rel), skipped


# ------------------------------------------------------------------------------------------------------- one clip
def _check_control(control: Control, frames: int, reference_size: tuple[int, int], backend: str) -> None:
    height, width = reference_size
    if not isinstance(control, Control) or (control.frames is None and control.audio is None):
        raise AvctlError(f"extractor {backend!r} returned no reference media")
    if control.frames is not None:
        shape = getattr(control.frames, "shape", None)
        if control.frames.dtype != np.uint8 or shape != (frames, height, width, 3):
            raise AvctlError(f"extractor {backend!r} returned reference frames {control.frames.dtype} {shape}, "
                             f"expected uint8 {(frames, height, width, 3)}")
    if control.mask is not None:
        shape = getattr(control.mask, "shape", None)
        if control.mask.dtype != np.uint8 or shape != (frames, height, width):
            raise AvctlError(f"extractor {backend!r} returned a mask {control.mask.dtype} {shape}, "
                             f"expected uint8 {(frames, height, width)}")
    if control.audio is not None and not control.sample_rate:
        raise AvctlError(f"extractor {backend!r} returned reference audio without a sample rate")


def _read_clip(path: Path, bucket: Bucket) -> VideoClip | str:
    """The first bucket.frames frames of `path`, or why the clip is too short (BadInput for an unreadable file)."""
    video = read_video(path, max_frames=bucket.frames)
    if len(video.frames) < bucket.frames:
        usable = (len(video.frames) - 1) // VAE_TEMPORAL * VAE_TEMPORAL + 1
        return (f"{path}: {len(video.frames)} frames, the bucket needs {bucket.frames} (use a longer clip, or a "
                f"bucket of at most {usable} frames)")
    return video


def _pair_reference(job: _Job, video: VideoClip, reference_size: tuple[int, int], bucket: Bucket) -> Control | str:
    """The source video of a pair as the reference: same frames and fit as the target, then INTER_AREA-shrunk to
    the reference size; or why the pair is unusable. BadInput for an unreadable file."""
    import cv2

    assert job.reference_source is not None
    source = Path(job.reference_source)
    clip = _read_clip(source, bucket)
    if isinstance(clip, str):
        return clip
    if abs(clip.fps - video.fps) > 0.01 * video.fps:
        return (f"{source}: {clip.fps:g} fps but its target {job.source} has {video.fps:g} fps; re-encode one so "
                "the pair's frames line up")
    frames = fit_to_bucket(clip.frames, bucket.width, bucket.height)  # [F, H, W, 3]
    height, width = reference_size
    if (height, width) != frames.shape[1:3]:
        frames = np.stack([cv2.resize(f, (width, height), interpolation=cv2.INTER_AREA) for f in frames])
    return Control(frames=np.ascontiguousarray(frames))


def _process(job: _Job, settings: _Settings, extractor: Extractor | None) -> dict[str, Any]:
    """Prepare one clip (or one pair, when `job.reference_source` is set; `extractor` is then unused). Returns
    {"rel", "status": "done"|"skipped"|"failed", "reason"?, "row"?, "frames"?, "extract_s"?}; never raises for a
    bad clip or a failing extractor, so one clip cannot stop a run."""
    bucket, out, source = settings.bucket, Path(settings.out), Path(job.source)
    reference_size = bucket.reference_size(settings.downscale)
    paired: Control | str | None = None
    try:
        video = _read_clip(source, bucket)
        if isinstance(video, str):
            return {"rel": job.rel, "status": "skipped", "reason": video}
        if job.reference_source is not None:
            paired = _pair_reference(job, video, reference_size, bucket)
            if isinstance(paired, str):
                return {"rel": job.rel, "status": "skipped", "reason": paired}
        frames = fit_to_bucket(video.frames, bucket.width, bucket.height)  # [F, H, W, 3]
        seconds = bucket.frames / video.fps
        audio = read_audio(source, AUDIO_SAMPLE_RATE, AUDIO_CHANNELS, max_seconds=seconds)
        if audio is not None:
            audio = fit_length(audio, round(seconds * AUDIO_SAMPLE_RATE))  # [2, samples]
    except BadInput as exc:
        return {"rel": job.rel, "status": "skipped", "reason": str(exc)}
    except Exception as exc:  # e.g. an OpenCV error on a strange frame: cost one clip, not the run
        return {"rel": job.rel, "status": "failed", "reason": f"{source}: {type(exc).__name__}: {exc}"}

    sample_rate = AUDIO_SAMPLE_RATE if audio is not None else None
    timing: dict[str, Any] = {}
    if paired is not None:
        control = paired
    else:
        assert extractor is not None
        clip = Clip(frames=frames, fps=video.fps, key=job.key, seed=settings.seed, reference_size=reference_size,
                    audio=audio, sample_rate=sample_rate, source=source)
        backend = getattr(extractor, "backend", type(extractor).__name__)
        try:
            started = time.perf_counter()
            control = extractor(clip)
            timing = {"frames": bucket.frames, "extract_s": time.perf_counter() - started}
            _check_control(control, bucket.frames, reference_size, backend)
            if control.notes:
                timing["notes"] = {str(k): str(v) for k, v in control.notes.items()}
        except BadInput as exc:  # the extractor found this clip unusable (e.g. nothing to detect)
            return {"rel": job.rel, "status": "skipped", "reason": f"{source}: {exc}"}
        except Exception as exc:  # an extractor bug must cost one clip, not the run
            return {"rel": job.rel, "status": "failed",
                    "reason": f"{source}: extractor {backend!r} failed: {type(exc).__name__}: {exc}"}

    row: dict[str, Any] = {"video": f"video/{job.rel}.mp4", "caption": job.caption}
    try:
        # The row is returned only after every file is in place, so the manifest never points at a missing file.
        write_video(out / row["video"], frames, video.fps, audio=audio, sample_rate=sample_rate)
        if control.frames is not None:
            row["reference_video"] = f"reference/{job.rel}.mp4"
            write_video(out / row["reference_video"], control.frames, video.fps, lossless=True)
        if control.mask is not None:
            row["reference_mask"] = f"mask/{job.rel}.mp4"
            mask_rgb = np.repeat(control.mask[..., None], 3, axis=-1)  # [F, h, w, 3]
            write_video(out / row["reference_mask"], mask_rgb, video.fps, lossless=True)
        if control.audio is not None:
            row["reference_audio"] = f"reference/{job.rel}.wav"
            write_wav(out / row["reference_audio"], control.audio, int(control.sample_rate or 0))
    except WriteError:
        raise  # a full or read-only disk stops the run: every later clip would fail the same way
    except (AvctlError, OSError) as exc:
        return {"rel": job.rel, "status": "failed", "reason": f"{source}: could not write the sample: {exc}"}
    row["fps"] = video.fps
    return {"rel": job.rel, "status": "done", "row": row, **timing}


# ------------------------------------------------------------------------------------------------------ the workers
_worker_state: tuple[_Settings, Extractor | None] | AvctlError | None = None


def _init_worker(modality: Modality, settings: _Settings, weights: Path | None, backend: str | None,
                 options: dict[str, Any] | None = None) -> None:
    global _worker_state
    if modality.extractor is None or settings.pairs:  # pairs: nothing to load
        _worker_state = (settings, None)
        return
    try:
        _worker_state = (settings, build_extractor(modality, weights, backend, options))
    except AvctlError as exc:  # e.g. MissingWeights: handed to the parent with its message by the first job
        _worker_state = exc
    except Exception as exc:
        _worker_state = AvctlError(f"the {modality.name!r} extractor failed to load: {type(exc).__name__}: {exc}")


def _run_in_worker(job: _Job) -> dict[str, Any]:
    if isinstance(_worker_state, AvctlError):
        raise _worker_state
    assert _worker_state is not None, "worker not initialised"
    return _process(job, *_worker_state)


def _extractor_identity(modality: Modality, weights: Path | None = None, backend: str | None = None,
                        options: dict[str, Any] | None = None) -> tuple[dict[str, str], Extractor | None]:
    """{"backend", "version"} of the modality's extractor, read from the factory when it carries them (a class with
    class attributes: no model load) and no other backend was asked for, else from an instance built here
    (returned so it can be reused)."""
    factory = modality.extractor
    assert factory is not None
    extractor: Extractor | None = None
    known, version = getattr(factory, "backend", None), getattr(factory, "version", None)
    if (isinstance(known, str) and isinstance(version, str) and backend is None and weights is None
            and not any(v is not None for v in (options or {}).values())):
        return {"backend": known, "version": version}, None
    extractor = build_extractor(modality, weights, backend, options)
    return {"backend": str(getattr(extractor, "backend", type(extractor).__name__)),
            "version": str(getattr(extractor, "version", "unknown"))}, extractor


def recorded_options(options: dict[str, Any] | None) -> dict[str, Any]:
    """The extractor options that are settings (numbers, flags, words) rather than inputs (files): what avctl.json and
    the LoRA record, so `generate --from-video` can build the same extractor."""
    return {k: v for k, v in (options or {}).items() if isinstance(v, (bool, int, float, str))}


# -------------------------------------------------------------------------------------------------------- prepare
def _sources_for(modality: Modality, inputs: list[Path], out: Path, bucket: Bucket,
                 factors: tuple[int, int] = (VAE_SPATIAL, VAE_TEMPORAL)) -> tuple[list[Source], list[dict[str, str]]]:
    """Videos for an extracting modality, pairs for a paired one, after checking the bucket; BadInput/BadUsage when
    the modality, the bucket or the inputs do not fit."""
    manifests = [path for path in inputs if is_pairs_manifest(path)]
    if pairs_given(modality, inputs):
        if not manifests or len(manifests) != len(inputs):
            videos = " (or only videos, from which it builds the pairs)" if modality.extractor is not None else ""
            raise BadInput(f"prepare for {modality.name!r} needs a pairs manifest (source and target videos): pass "
                           "one .jsonl with {\"source\", \"target\", \"caption\"?} per line or a .csv with "
                           f"source,target[,caption] columns{videos}, not videos ({modality.extractor_note})")
        bucket.check(*factors, modality.downscale)
        pairs, skipped = find_pairs(manifests)
        if not pairs and not skipped:
            raise BadInput(f"{manifests[0]}: the pairs manifest has no rows; add one source/target pair per line")
        return pairs, skipped
    if modality.extractor is None:
        raise BadInput(f"prepare for {modality.name!r} needs an extractor this version does not ship yet; "
                       f"{modality.extractor_note}")
    if manifests:
        raise BadUsage(f"{manifests[0]}: a pairs manifest, but {modality.name!r} extracts its control from videos; "
                       "pass video files or folders")
    bucket.check(*factors, modality.downscale)
    return find_sources(inputs, out)


def pairs_given(modality: Modality, inputs: Iterable[str | Path]) -> bool:
    """Whether this run takes ready-made (source, target) pairs from manifests: always for a paired modality without
    an extractor; for one with an extractor (which builds pairs from plain videos) when a manifest is given."""
    return modality.paired and (modality.extractor is None or any(is_pairs_manifest(p) for p in inputs))


def _check_compatible(out: Path, existing: dict[str, Any], info: dict[str, Any]) -> None:
    different = [name for name in _COMPATIBLE_FIELDS if existing.get(name) != info.get(name)]
    if different:
        was = ", ".join(f"{name} {existing.get(name)!r}" for name in different)
        now = ", ".join(f"{name} {info.get(name)!r}" for name in different)
        raise BadInput(f"{out / INFO}: this folder holds a dataset prepared with {was}, not {now}; use --overwrite "
                       "to replace it or choose another --out")


def prepare(
    modality: Modality,
    inputs: list[Path],
    out: Path,
    bucket: Bucket,
    caption: str | None,
    seed: int = 42,
    workers: int = 1,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
    weights: Path | None = None,
    backend: str | None = None,
    options: dict[str, Any] | None = None,
    factors: tuple[int, int] = (VAE_SPATIAL, VAE_TEMPORAL),
    variants: int = 1,
) -> PrepareSummary:
    """Build (or resume) the dataset for `modality` in `out` from `inputs` (videos and folders, or pairs manifests
    for a paired modality). Raises BadInput/BadUsage when nothing can start (unsupported modality, bad bucket, no
    videos, an incompatible existing dataset, --weights/--backend the extractor cannot take); per-clip problems are
    listed in the summary instead. `progress(done, total)` is called with 0 first, then after each clip.
    `options`: extra extractor keyword arguments (None values dropped), e.g. {"speakers": PATH} for
    who-is-talking; an extractor that does not declare one refuses it with BadUsage. `factors`: the (spatial,
    temporal) compression of the VAE that will encode the dataset (dataset.vae_factors); the bucket must fit it.
    `variants`: samples made per video, each with its own key (`<key>#k`) and so its own random draws (e.g.
    camera-video's source camera path, inpaint's mask); variant k > 0 is named `<rel>.vk`."""
    if workers < 1:
        raise BadUsage(f"--workers must be at least 1, got {workers}")
    if variants < 1:
        raise BadUsage(f"--variants must be at least 1, got {variants}")
    pairs = pairs_given(modality, inputs)
    if pairs and (weights is not None or backend is not None):
        raise BadUsage(f"--weights/--backend: {modality.name!r} is made from pairs of videos and runs no extractor; "
                       "drop them")
    if pairs and variants > 1:
        raise BadUsage("--variants: pairs from a manifest are taken as given, one sample each; drop --variants")
    out = Path(out)
    sources, early_skips = _sources_for(modality, list(inputs), out, bucket, factors)
    found = len(sources) + len(early_skips)
    sources = [replace(s, rel=f"{s.rel}.v{k}", key=f"{s.key}#{k}") if k else s
               for s in sources for k in range(variants)]

    if pairs:
        identity, extractor = dict(PAIRS_IDENTITY), None
    else:
        identity, extractor = _extractor_identity(modality, weights, backend, options)
    info = {
        "modality": modality.name,
        "bucket": str(bucket),
        "downscale": modality.downscale,
        "reference_size": list(bucket.reference_size(modality.downscale)),
        "extractor": identity,
        **({"extractor_options": settings} if (settings := recorded_options(options)) else {}),
        "seed": seed,
        "audio_sample_rate": AUDIO_SAMPLE_RATE,
        "avctl_version": __version__,
    }
    summary = PrepareSummary(out=out, modality=modality.name, bucket=str(bucket), skipped=list(early_skips),
                             inputs=found)
    extracted: dict[str, Any] = {"frames": 0, "seconds": 0.0}
    # One run at a time per folder: a second one waits here, then reads the rows the first one wrote.
    with folder_lock(out, f"avctl prepare {modality.name}"):
        _prepare_locked(modality, out, info, sources, summary, caption, seed, workers, overwrite, progress, weights,
                        backend, options, extractor, extracted)
    if extracted["frames"] and extracted["seconds"] > 0:
        summary.frames_per_s = round(extracted["frames"] / extracted["seconds"], 2)
    summary.done.sort()
    summary.skipped.sort(key=lambda item: item["clip"])
    summary.failed.sort(key=lambda item: item["clip"])
    return summary


def _prepare_locked(
    modality: Modality, out: Path, info: dict[str, Any], sources: list[Source], summary: PrepareSummary,
    caption: str | None, seed: int, workers: int, overwrite: bool, progress: Callable[[int, int], None] | None,
    weights: Path | None, backend: str | None, options: dict[str, Any] | None, extractor: Extractor | None,
    extracted: dict[str, Any],
) -> None:
    """The part of `prepare` that reads and writes the folder, run while holding its lock."""
    bucket = Bucket.parse(info["bucket"])
    existing = read_info(out)
    if existing is not None and not overwrite:
        _check_compatible(out, existing, info)
    remove_stale_temp_files(out, ("video", "reference", "mask"))
    # A new dataset gets avctl.json and its manifest with its first finished sample, so a run that finishes none
    # leaves nothing that would stand in another run's way.
    started = existing is not None and not overwrite
    if started:
        atomic_write_json(out / INFO, info)
    rows: dict[str, dict[str, Any]] = {} if overwrite else {row["video"]: row for row in read_rows(out)}
    jobs: list[_Job] = []
    for source in sources:
        text = source.caption if source.caption is not None else caption_for(source.path, caption)
        row = rows.get(f"video/{source.rel}.mp4")
        if row is not None and all(path.is_file() for path in row_files(out, row)):
            row["caption"] = text  # captions are cheap to refresh; media are not redone
            summary.existing.append(source.rel)
        else:
            rows.pop(f"video/{source.rel}.mp4", None)
            jobs.append(_Job(source=str(source.path), rel=source.rel, key=source.key, caption=text,
                             reference_source=str(source.reference) if source.reference is not None else None))
    if started:
        write_manifest(out, rows.values())

    settings = _Settings(out=str(out), bucket=bucket, downscale=modality.downscale, seed=seed,
                         pairs=any(job.reference_source is not None for job in jobs))

    def record(result: dict[str, Any], completed: int) -> None:
        nonlocal started
        if result["status"] == "done":
            if not started:
                atomic_write_json(out / INFO, info)
                started = True
            rows[result["row"]["video"]] = result["row"]
            write_manifest(out, rows.values())
            summary.done.append(result["rel"])
        else:
            getattr(summary, result["status"]).append({"clip": result["rel"], "reason": result["reason"]})
        if result["status"] == "done":
            for key, value in result.get("notes", {}).items():
                counts = summary.made_from.setdefault(key, {})
                counts[value] = counts.get(value, 0) + 1
        if "extract_s" in result:
            extracted["frames"] += int(result["frames"])
            extracted["seconds"] += float(result["extract_s"])
        summary.rows = len(rows)
        if progress is not None:
            progress(completed, len(jobs))

    summary.rows = len(rows)
    if progress is not None:
        progress(0, len(jobs))
    if workers == 1 or len(jobs) <= 1:
        if extractor is None and any(job.reference_source is None for job in jobs):
            extractor = build_extractor(modality, weights, backend, options)
        for completed, job in enumerate(jobs, start=1):
            record(_process(job, settings, extractor), completed)
    else:
        _run_pool(modality, settings, jobs, workers, record, weights, backend, options)


def _run_pool(
    modality: Modality,
    settings: _Settings,
    jobs: list[_Job],
    workers: int,
    record: Callable[[dict[str, Any], int], None],
    weights: Path | None = None,
    backend: str | None = None,
    options: dict[str, Any] | None = None,
) -> None:
    context = multiprocessing.get_context("spawn")  # fork would copy CUDA/threads state of a model-backed parent
    pool = ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=context, initializer=_init_worker,
                               initargs=(modality, settings, weights, backend, options))
    try:
        pending: set[Future[dict[str, Any]]] = {pool.submit(_run_in_worker, job) for job in jobs}
        completed = 0
        while pending:
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                completed += 1
                record(future.result(), completed)
    except BrokenProcessPool as exc:
        raise AvctlError(f"a prepare worker died ({exc}); rerun the same command to resume, perhaps with fewer "
                         "--workers") from exc
    finally:
        # On an interruption, queued clips are dropped; running ones finish writing (atomically) but get no row.
        pool.shutdown(wait=True, cancel_futures=True)


# ------------------------------------------------------------------------------------------- throughput and encode
def _throughput_frames(frames: int, size: int) -> np.ndarray:
    """[frames, size, size, 3] uint8: seeded texture plus a bright square moving 4 px a frame (edges, corners and
    motion for every kind of extractor)."""
    import cv2

    rng = np.random.default_rng(0)
    texture = cv2.GaussianBlur(rng.integers(0, 256, (size + 4 * frames, size + 4 * frames, 3), dtype=np.uint8),
                               (0, 0), 2.0)
    out = np.empty((frames, size, size, 3), dtype=np.uint8)  # [F, S, S, 3]
    side = size // 4
    for i in range(frames):
        out[i] = texture[4 * i : 4 * i + size, 4 * i : 4 * i + size]
        out[i, side : 2 * side, side + 4 * i : 2 * side + 4 * i] = 230
    return out


def prepare_throughput(modality: Modality, frames: int = 17, size: int = 512, weights: Path | None = None,
                       backend: str | None = None) -> float:
    """Frames per second of the modality's extractor on `frames` synthetic size×size frames (one clip, after one
    untimed warm-up call on its first frames). Model-backed extractors need their weights as for `prepare`."""
    if frames < 1 or size < 8:
        raise BadUsage(f"throughput needs at least 1 frame of at least 8×8 pixels, got {frames} of {size}×{size}")
    if modality.extractor is None:
        raise BadUsage(f"{modality.name!r} runs no extractor ({modality.extractor_note}); nothing to time")
    extractor = build_extractor(modality, weights, backend)
    video = _throughput_frames(frames, size)
    reference_size = (size // modality.downscale, size // modality.downscale)

    def clip(selected: np.ndarray) -> Clip:
        return Clip(frames=selected, fps=24.0, key="throughput", seed=0, reference_size=reference_size)

    extractor(clip(video[: min(2, frames)]))  # warm-up: lazy imports, allocator, model kernels
    started = time.perf_counter()
    extractor(clip(video))
    return frames / max(time.perf_counter() - started, 1e-9)


def encode_dataset(
    out: Path, backbone: Any, load: Callable[[frozenset[str]], Any] | None = None,
    progress: Callable[[int, int], None] | None = None, allow_outside_media: bool = False,
) -> dict[str, int]:
    """Fill `out`'s latent cache for `backbone` now (what `avctl train` would otherwise do first). With
    `load(components)`, `backbone` may hold only the configs: the encoders are loaded only when an entry is missing
    and released after. Returns {"encoded": samples encoded now, "cached": samples whose cache entry was already
    fresh}."""
    from avctl.cache import precompute
    from avctl.dataset import load_manifest

    info, rows = load_manifest(out, allow_outside_media)
    done = precompute(backbone, Path(out), info, rows, load or (lambda parts: backbone), progress=progress)
    return {"encoded": done.encoded, "cached": len(rows) - done.encoded}


def bucket_for(text: str | None, model: str | None, downscale: int = 1) -> Bucket:
    """`--bucket WxHxF`, else the model's default clip size for a modality of this reference downscale."""
    return Bucket.parse(text) if text else default_bucket(model, downscale)


def model_factors(model: str | None) -> tuple[int, int]:
    """(spatial, temporal) compression of the model's video VAE, read from its config (no weights load)."""
    from avctl.dataset import vae_factors

    return vae_factors(model)


def encode_for_model(out: Path, model: str | None, vae_tiling: bool = True,
                     progress: Callable[[int, int], None] | None = None,
                     allow_outside_media: bool = False) -> dict[str, int]:
    """`encode_dataset` for a model by name: only its configs load first, the encoders only for missing entries."""
    from avctl.backbone import open_backbone

    return encode_dataset(out, open_backbone(model, components=set(), vae_tiling=vae_tiling),
                          lambda parts: open_backbone(model, components=set(parts), vae_tiling=vae_tiling),
                          progress=progress, allow_outside_media=allow_outside_media)
