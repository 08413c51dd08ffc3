"""The prepared dataset on disk: its manifest, its info file, bucket rules and per-clip randomness.

A prepared dataset folder holds

    dataset.jsonl        one row per sample, ltx-trainer columns: video, caption, reference_video
                         [, reference_mask, reference_audio], plus fps; paths relative to the folder, rows sorted
    avctl.json           modality, bucket "WxHxF", reference downscale, extractor backend + version, seed, avctl version
    video/<rel>.mp4      the bucket-size target (with the source's audio, when it has some)
    reference/<rel>.mp4  the control, lossless, at bucket size ÷ downscale   (reference/<rel>.wav for audio controls;
                         for paired modalities the pair's source video, cut and fitted like its target)
    mask/<rel>.mp4       the hole mask (255 = hole), lossless, for masked controls

Every file is written atomically and the manifest is rewritten after each sample, so a row never points at a file
that is missing.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from avctl.errors import BadInput, BadUsage
from avctl.io import atomic_write, contained
from avctl.media import Bucket
from avctl.modalities.base import Modality

MANIFEST = "dataset.jsonl"
_TEMP_NAME = re.compile(r"^\..+\.[0-9a-f]{12}\.tmp\.[A-Za-z0-9]+$")  # avctl.io.temp_name's temp names
INFO = "avctl.json"
# Manifest columns that name files (relative to the dataset folder).
FILE_COLUMNS = ("video", "reference_video", "reference_mask", "reference_audio", "audio")

# LTX-2's video VAE compresses 32× in space and 8× in time (the tiny test preset uses the same factors).
VAE_SPATIAL = 32
VAE_TEMPORAL = 8

TINY_BUCKET = Bucket(128, 128, 17)
LTX2_BUCKET = Bucket(768, 448, 89)
POCKET_BUCKET = Bucket(64, 64, 17)  # the size pocket was pretrained at


def vae_factors(model: str | None) -> tuple[int, int]:
    """(spatial, temporal) compression of the model's video VAE, read from its vae/config.json without loading any
    weights: the built-in pocket preset or a diffusers-format folder. LTX-2's (32, 8) otherwise (tiny, hub ids, no
    model given)."""
    folder: Path | None = None
    if model == "pocket":
        from avctl.backbone import POCKET_DIR

        folder = POCKET_DIR
    elif model and model != "tiny" and Path(model).is_dir():
        folder = Path(model)
    config = folder / "vae" / "config.json" if folder is not None else None
    if config is None or not config.is_file():
        return VAE_SPATIAL, VAE_TEMPORAL
    try:
        cfg = json.loads(config.read_text())
        return int(cfg.get("spatial_compression_ratio", VAE_SPATIAL)), int(cfg.get("temporal_compression_ratio",
                                                                                   VAE_TEMPORAL))
    except (ValueError, TypeError) as exc:
        raise BadInput(f"{config}: not a readable VAE config ({exc}); re-download the model") from exc


def default_bucket(model: str | None, downscale: int = 1) -> Bucket:
    """The bucket to use when none is given: 128x128x17 for the "tiny" preset, 64x64x17 for "pocket", else LTX-2's
    768x448x89. With a reference downscale that the size does not divide into (4× on LTX-2 needs multiples of 128),
    the size grows to the next valid one (768x512x89)."""
    base = {"tiny": TINY_BUCKET, "pocket": POCKET_BUCKET}.get(model or "", LTX2_BUCKET)
    step = vae_factors(model)[0] * downscale
    width = -(-base.width // step) * step
    height = -(-base.height // step) * step
    return Bucket(width, height, base.frames)


def clip_rng(key: str, seed: int, salt: str) -> np.random.Generator:
    """A random generator that depends only on (salt, clip key, run seed), never on process, worker count or
    Python's salted `hash`, so a dataset comes out the same however it is prepared."""
    digest = hashlib.sha256(f"{salt}\0{key}\0{seed}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


# --------------------------------------------------------------------------------------------------------- writing
def write_manifest(out: Path, rows: Iterable[dict[str, Any]]) -> None:
    """Rewrite `out/dataset.jsonl` atomically, rows sorted by their target path."""
    ordered = sorted(rows, key=lambda row: row["video"])
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in ordered)
    atomic_write(out / MANIFEST, text)


def row_files(out: Path, row: dict[str, Any]) -> list[Path]:
    return [out / row[column] for column in FILE_COLUMNS if isinstance(row.get(column), str)]


# --------------------------------------------------------------------------------------------------------- reading
def read_info(out: Path) -> dict[str, Any] | None:
    """`out/avctl.json`, or None when there is none."""
    path = out / INFO
    if not path.exists():
        return None
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadInput(f"{path}: unreadable ({exc}); prepare the dataset again with --overwrite") from exc
    if not isinstance(info, dict):
        raise BadInput(f"{path}: not a JSON object; prepare the dataset again with --overwrite")
    return info


def read_rows(out: Path) -> list[dict[str, Any]]:
    """The rows of `out/dataset.jsonl` ([] when there is no manifest yet)."""
    path = out / MANIFEST
    if not path.exists():
        return []
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise BadInput(f"{path}:{number}: not valid JSON ({exc.msg}); fix or delete the line") from exc
        if not isinstance(row, dict) or not isinstance(row.get("video"), str):
            raise BadInput(f"{path}:{number}: a row needs at least a 'video' path; fix or delete the line")
        rows.append(row)
    return rows


def load_manifest(directory: str | Path, allow_outside_media: bool = False) -> tuple[dict[str, Any],
                                                                                    list[dict[str, Any]]]:
    """(info, rows) of a prepared dataset, checked: both files exist, every row has a caption and its files exist
    inside the folder (an absolute, `../` or symlinked-out path is refused unless `allow_outside_media`), and there is
    at least one row. Raises BadInput naming the file and what to do."""
    out = Path(directory)
    if not out.is_dir():
        raise BadInput(f"{out}: no such dataset folder; run `avctl prepare` first")
    info = read_info(out)
    if info is None:
        raise BadInput(f"{out / INFO}: missing; this folder was not made by `avctl prepare` (run it first)")
    if not (out / MANIFEST).exists():
        raise BadInput(f"{out / MANIFEST}: missing; run `avctl prepare` on this folder again")
    rows = read_rows(out)
    if not rows:
        raise BadInput(f"{out / MANIFEST}: the dataset is empty; prepare it from videos that are long enough")
    for number, row in enumerate(rows, start=1):
        if not isinstance(row.get("caption", ""), str):
            raise BadInput(f"{out / MANIFEST}:{number}: 'caption' must be a string")
        for column in FILE_COLUMNS:
            if isinstance(row.get(column), str):
                contained(row[column], out, allow_outside=allow_outside_media,
                          what=f"{out / MANIFEST}:{number}: {column}")
        missing = [str(path) for path in row_files(out, row) if not path.is_file()]
        if missing:
            raise BadInput(f"{out / MANIFEST}:{number}: missing file {missing[0]}; rerun `avctl prepare` "
                           f"with the same --out to redo it")
    return info, rows


def dataset_bucket(info: dict[str, Any]) -> Bucket:
    try:
        return Bucket.parse(str(info["bucket"]))
    except (KeyError, BadUsage) as exc:
        raise BadInput(f"{INFO}: has no valid 'bucket'; prepare the dataset again with --overwrite") from exc


def check_dataset(info: dict[str, Any], modality: Modality, bucket: Bucket | None = None) -> Bucket:
    """The dataset's bucket, after checking the dataset was prepared for `modality` (and `bucket`, when given)."""
    prepared_for = info.get("modality")
    if prepared_for != modality.name:
        raise BadInput(f"{INFO}: this dataset was prepared for {prepared_for!r}, not {modality.name!r}; "
                       f"use a dataset prepared with `avctl prepare {modality.name}`")
    found = dataset_bucket(info)
    if bucket is not None and found != bucket:
        raise BadInput(f"{INFO}: this dataset was prepared at bucket {found}, not {bucket}; drop the bucket option "
                       f"or prepare again with --bucket {bucket}")
    downscale = info.get("downscale", 1)
    if downscale != modality.downscale:
        raise BadInput(f"{INFO}: this dataset's reference downscale is {downscale} but {modality.name!r} uses "
                       f"{modality.downscale}; prepare it again with --overwrite")
    return found


def remove_stale_temp_files(out: Path, subfolders: Iterable[str]) -> None:
    """Temp files a killed run left behind (`.<name>.<hex>.tmp.<ext>`) in `out` and the given media subfolders:
    nothing refers to them. Other folders (e.g. a latent cache) are not touched."""
    folders = [out] + [out / sub for sub in subfolders]
    for top in folders:
        if not top.is_dir():
            continue
        walk = os.walk(top) if top != out else [(str(out), [], [p.name for p in out.iterdir() if p.is_file()])]
        for folder, _dirs, files in walk:
            for name in files:
                if _TEMP_NAME.match(name):
                    Path(folder, name).unlink(missing_ok=True)
