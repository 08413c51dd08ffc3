"""Monocular depth estimation: Depth-Anything-V2 through transformers' `AutoModelForDepthEstimation`, relative
inverse depth (disparity: larger = nearer). Shared by the depth modality (its control and metric) and the camera
controls (`avctl.camera`); it names no modality.

No weights ship with avctl: they are looked up in the `weights` directory, then `$AVCTL_HOME/weights/<backend>`,
then the local Hugging Face cache (never the network); a missing model raises `MissingWeights`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from avctl.errors import BadUsage, MissingWeights
from avctl.modalities.base import weight_places

BACKEND = "depth-anything-v2"
DEFAULT_MODEL = "depth-anything/Depth-Anything-V2-Small-hf"
#: Backend name → Hugging Face repository of its default weights.
BACKENDS = {BACKEND: DEFAULT_MODEL}


def _is_model_dir(path: Path) -> bool:
    return (path / "config.json").is_file()


def _cached_repo(repo_id: str) -> bool:
    """Whether the local Hugging Face cache holds `repo_id`'s config (no network)."""
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(repo_id, "config.json")
    except ValueError:  # not a valid repo id (e.g. a path that does not exist)
        return False
    return isinstance(found, str)


def _download_hint(repo_id: str, places: list[Path]) -> str:
    where = places[0] if places else f"$AVCTL_HOME/weights/{BACKEND}"
    return (f"download it with `huggingface-cli download {repo_id}` (into the Hugging Face cache) or "
            f"`huggingface-cli download {repo_id} --local-dir {where}`")


class DepthAnything:
    """Depth-Anything(-V2) via transformers, loaded once; `predict` estimates relative inverse depth, in batches."""

    backend = BACKEND

    def __init__(self, model: Any, processor: Any, *, source: str, device: str, batch_size: int = 8) -> None:
        self.model = model
        self.processor = processor
        self.device = device
        self.batch_size = batch_size
        self.source = source

    @classmethod
    def from_pretrained(cls, path_or_id: str | Path = DEFAULT_MODEL, device: str | None = None,
                        batch_size: int = 8) -> Any:
        """Load from a local directory (as written by `save_pretrained`) or a hub id already in the local cache.

        Never downloads: a hub id that is not cached raises `MissingWeights` at once."""
        import torch
        from transformers import AutoImageProcessor, AutoModelForDepthEstimation

        path = Path(path_or_id)
        if path.is_dir():
            if not _is_model_dir(path):
                raise MissingWeights(f"{path} holds no depth model (no config.json); "
                                     + _download_hint(DEFAULT_MODEL, [path]))
            source, local = str(path), True
        else:
            source = str(path_or_id)
            if not _cached_repo(source):
                raise MissingWeights(f"depth model {source} is not in the local Hugging Face cache; "
                                     + _download_hint(source, []))
            local = False
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        try:
            processor = AutoImageProcessor.from_pretrained(source, local_files_only=True)
            model = AutoModelForDepthEstimation.from_pretrained(source, local_files_only=True)
        except OSError as exc:
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise MissingWeights(f"depth model {source} is incomplete ({first_line}); "
                                 + _download_hint(DEFAULT_MODEL if local else source, [path] if local else [])) from exc
        model.eval().to(device)
        return cls(model, processor, source=source, device=device, batch_size=batch_size)

    def predict(self, frames: np.ndarray) -> np.ndarray:
        """[F, H, W, 3] uint8 RGB → [F, H, W] float32 relative inverse depth (un-normalised) at the frames' size."""
        import torch

        height, width = frames.shape[1:3]
        out = np.empty(frames.shape[:3], dtype=np.float32)  # [F, H, W]
        for start in range(0, len(frames), self.batch_size):
            batch = list(frames[start : start + self.batch_size])
            inputs = self.processor(images=batch, return_tensors="pt")
            pixel_values = inputs["pixel_values"].to(self.device, dtype=next(self.model.parameters()).dtype)
            with torch.inference_mode():
                predicted = self.model(pixel_values=pixel_values).predicted_depth  # [B, h, w]
            resized = torch.nn.functional.interpolate(predicted[:, None].float(), size=(height, width),
                                                      mode="bilinear", align_corners=False)[:, 0]  # [B, H, W]
            out[start : start + len(batch)] = resized.cpu().numpy()
        return out

    @property
    def version(self) -> str:
        return f"1 ({self.source})"


def load_depth_model(weights: Path | None = None, backend: str | None = None, kind: type = DepthAnything) -> Any:
    """A monocular depth model of class `kind` (a `DepthAnything`), loaded once. Weights: `weights` (a model dir, or
    a dir holding `<backend>/`), then `$AVCTL_HOME/weights/<backend>`, then the local Hugging Face cache; else
    `MissingWeights`."""
    backend = backend or BACKEND
    if backend not in BACKENDS:
        raise BadUsage(f"unknown depth backend {backend!r}; known: {', '.join(BACKENDS)}")
    repo_id = BACKENDS[backend]
    places = weight_places(weights, backend)
    for place in places:
        if _is_model_dir(place):
            return kind.from_pretrained(place)
    if _cached_repo(repo_id):
        return kind.from_pretrained(repo_id)
    searched = ", ".join([*(str(p) for p in places), "the local Hugging Face cache"])
    raise MissingWeights(f"no {backend} depth weights in {searched}; "
                         + _download_hint(repo_id, places[:1] or []))
