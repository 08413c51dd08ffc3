"""Every file avctl writes goes through here: atomic writes, deterministic safetensors, checked media encodes, the
dataset-folder lock and path containment.

- `atomic_path` / `atomic_write` / `atomic_write_json`: write a temp file in the target's folder, flush it to disk,
  then `os.replace` it, so a reader (or a rerun after `kill -9`) sees the old file or the whole new one, never half.
- `save_safetensors`: the safetensors format written by hand (8-byte little-endian header length, a JSON header with
  sorted keys, the raw tensors in key order), so the same tensors and metadata always give the same bytes and a
  file's sha256 is a fingerprint of its content.
- `atomic_media`: like `atomic_path`, but the encoded file must read back (a full disk leaves ffmpeg's output
  without its index while ffmpeg's exit status goes unchecked by imageio-ffmpeg) before it takes the final name.
- `folder_lock`: one writer per dataset folder (`fcntl.flock`); a second run waits and says so on stderr.
- `save_resume_state` / `load_resume_state`: the one resume format of avctl's loops (LoRA training, pocket
  pretraining): weights, AdamW moments and generator state as safetensors, named by a JSON written last.
- `contained`: a path given by data (a manifest row) must resolve, symlinks included, inside its root.

A disk error (full, read-only, no permission) becomes `WriteError`: one line naming the file, never a traceback.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import struct
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from avctl.errors import AvctlError, BadInput

LOCK_NAME = ".avctl.lock"
TEMP_MARK = ".tmp"  # temp names: `.<stem>.<12 hex>.tmp<suffix>` (dataset.remove_stale_temp_files knows them)


class WriteError(AvctlError):
    """A file could not be written (disk full, read-only folder, no permission). Nothing took its final name."""


def _write_error(path: Path, exc: OSError) -> WriteError:
    why = os.strerror(exc.errno) if exc.errno else str(exc)
    hint = {errno.ENOSPC: "free some space", errno.EDQUOT: "free some space", errno.EROFS: "choose a writable folder",
            errno.EACCES: "choose a writable folder", errno.EPERM: "choose a writable folder"}.get(exc.errno or 0)
    return WriteError(f"cannot write {path}: {why}" + (f"; {hint} and rerun the same command" if hint else ""))


def temp_name(path: Path, suffix: str | None = None) -> Path:
    """A unique hidden temp path beside `path`, keeping its suffix (or `suffix`) so tools infer the format."""
    path = Path(path)
    return path.with_name(f".{path.stem}.{uuid.uuid4().hex[:12]}{TEMP_MARK}{path.suffix if suffix is None else suffix}")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | Path, check: Callable[[Path], None] | None = None) -> Iterator[Path]:
    """A temp path beside `path` for the caller to write; on success it is flushed, passed to `check` (which raises
    when the file is not complete) and renamed to `path`; on any failure it is removed and `path` is left as it
    was. OSErrors become `WriteError`."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _write_error(path, exc) from exc
    tmp = temp_name(path)
    try:
        yield tmp
        if not tmp.is_file():
            raise AvctlError(f"{path}: nothing was written")
        _fsync(tmp)
        if check is not None:
            check(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        raise _write_error(path, exc) from exc
    finally:
        with suppress(OSError):
            tmp.unlink()


def atomic_write(path: str | Path, data: bytes | str) -> None:
    """Write bytes (or UTF-8 text) to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)


def atomic_write_json(path: str | Path, data: Any, indent: int | None = 2) -> None:
    atomic_write(path, json.dumps(data, indent=indent, ensure_ascii=False) + ("\n" if indent is not None else ""))


# ----------------------------------------------------------------------------------------------------- safetensors
def _dtype_names() -> dict[Any, str]:
    import torch

    names = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
             torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
             torch.bool: "BOOL"}
    for attr, name in (("float8_e4m3fn", "F8_E4M3"), ("float8_e5m2", "F8_E5M2")):
        if hasattr(torch, attr):
            names[getattr(torch, attr)] = name
    return names


def safetensors_bytes_header(tensors: dict[str, Any], metadata: dict[str, str] | None) -> tuple[bytes, list[str]]:
    """The length prefix + JSON header of a safetensors file for `tensors`, and the tensor names in data order."""
    dtypes = _dtype_names()
    header: dict[str, Any] = {}
    if metadata:
        bad = [k for k, v in metadata.items() if not isinstance(k, str) or not isinstance(v, str)]
        if bad:
            raise TypeError(f"safetensors metadata must map str to str; {bad[0]!r} does not")
        header["__metadata__"] = dict(sorted(metadata.items()))
    names = sorted(tensors)
    offset = 0
    for name in names:
        t = tensors[name]
        if t.dtype not in dtypes:
            raise TypeError(f"{name}: dtype {t.dtype} cannot be stored in safetensors")
        size = t.numel() * t.element_size()
        header[name] = {"dtype": dtypes[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("utf-8")
    text += b" " * (-len(text) % 8)  # the format pads the header so the data starts 8-byte aligned
    return struct.pack("<Q", len(text)) + text, names


def save_safetensors(tensors: dict[str, Any], path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """Write torch tensors as a safetensors file, atomically and byte-for-byte reproducibly (same tensors and
    metadata → same bytes, whatever the process). Metadata keys stay top-level `__metadata__` keys."""
    import torch

    _check_little_endian()
    head, names = safetensors_bytes_header(tensors, metadata)
    with atomic_path(path) as tmp, tmp.open("wb") as f:
        f.write(head)
        for name in names:
            t = tensors[name].detach().to("cpu").contiguous()
            if t.numel():
                raw = t.reshape(-1).view(torch.uint8) if t.dtype != torch.bool else t.reshape(-1).to(torch.uint8)
                f.write(memoryview(raw.numpy()))


def _check_little_endian() -> None:
    if sys.byteorder != "little":  # safetensors stores little-endian; tensor bytes were written as in memory
        raise AvctlError("safetensors files can only be written on a little-endian machine")


@contextmanager
def atomic_folder(path: str | Path) -> Iterator[Path]:
    """A hidden staging folder beside `path` for the caller to fill; on success it replaces `path` (an old folder is
    moved aside first, then removed), on failure it is removed and `path` is left as it was."""
    import shutil
    import tempfile

    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=TEMP_MARK, dir=path.parent))
    except OSError as exc:
        raise _write_error(path, exc) from exc
    try:
        yield staging
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, old)
            os.replace(staging, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, path)
    except OSError as exc:
        raise _write_error(path, exc) from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------------- media
@contextmanager
def atomic_media(path: str | Path, check: Callable[[Path], None]) -> Iterator[Path]:
    """`atomic_path` for an encoder's output: `check(tmp)` must confirm the encoded file is complete and readable
    (raising otherwise) before it is renamed into place."""
    with atomic_path(path, check=check) as tmp:
        yield tmp


# --------------------------------------------------------------------------------------------------------- resume
def save_resume_state(path: str | Path, step: int, tensors: dict[str, Any], moments: dict[str, dict[str, Any]],
                      generator: Any, meta: dict[str, Any], fmt: str) -> None:
    """Everything an exact resume needs, for any loop: `<path>_<step:06d>.safetensors` holds `tensors` (the weights,
    under the caller's keys), the AdamW moments by parameter name (`exp_avg.<name>`, `exp_avg_sq.<name>`) and the
    torch.Generator's state (`generator`); `<path>.json` holds `meta`, the step, that file's name, the AdamW step
    counts and the torch thread count. The JSON is written last and names the tensors file, so a kill between the
    two leaves the previous state valid; older tensor files go once it is written."""
    import torch

    path = Path(path)
    tensors = dict(tensors)
    for name, st in moments.items():
        tensors[f"exp_avg.{name}"] = st["exp_avg"]
        tensors[f"exp_avg_sq.{name}"] = st["exp_avg_sq"]
    tensors["generator"] = generator.get_state()
    tensors_name = f"{path.name}_{step:06d}.safetensors"
    save_safetensors(tensors, path.parent / tensors_name, {"format": fmt})
    info = {**meta, "step": step, "tensors": tensors_name, "torch_threads": torch.get_num_threads(),
            "adam_steps": {name: float(st["step"]) for name, st in moments.items()}}
    atomic_write(path.with_name(path.name + ".json"), json.dumps(info))
    for old in path.parent.glob(f"{path.name}_*.safetensors"):
        if old.name != tensors_name:
            old.unlink(missing_ok=True)


def load_resume_state(path: str | Path) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """(`<path>.json`'s contents, the tensors of the file it names), or None when no state was saved."""
    from safetensors.torch import load_file

    path = Path(path)
    meta_path = path.with_name(path.name + ".json")
    if not meta_path.is_file():
        return None
    meta = json.loads(meta_path.read_text())
    return meta, load_file(str(path.parent / meta["tensors"]))


# ----------------------------------------------------------------------------------------------------------- lock
@contextmanager
def folder_lock(folder: str | Path, what: str = "avctl") -> Iterator[None]:
    """Hold the exclusive lock of `folder` (its hidden `.avctl.lock`, created if missing). When another run holds it,
    say so on stderr and wait for it to finish."""
    folder = Path(folder)
    lock = folder / LOCK_NAME
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise _write_error(lock, exc) from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            sys.stderr.write(f"{what}: {folder} is in use by another avctl run; waiting for it to finish\n")
            sys.stderr.flush()
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


# ---------------------------------------------------------------------------------------------------- containment
def contained(path: str | Path, root: str | Path, *, allow_outside: bool = False, what: str = "path",
              hint: str = "keep media inside the folder or pass --allow-outside-media") -> Path:
    """`root / path`, after checking that it resolves (symlinks followed) inside `root`. An absolute path, a `../`
    escape or a symlink pointing out is refused with BadInput unless `allow_outside` (then it is returned as is)."""
    root = Path(root)
    full = root / path  # an absolute `path` replaces root here, which is what must be caught
    if allow_outside:
        return full
    if not full.resolve().is_relative_to(root.resolve()):
        raise BadInput(f"{what} {str(path)!r} lies outside {root} (absolute, '..' or a symlink out); {hint}")
    return full
