"""Depth (paper §7): per-frame depth of real videos as the reference, at half resolution.

The default extractor is Depth-Anything-V2-Small (`depth-anything/Depth-Anything-V2-Small-hf`, Apache-2.0) through
transformers' `AutoModelForDepthEstimation`. The model predicts relative *inverse* depth (disparity: larger = nearer).
Each clip is rendered as follows:

* the frames run through the model in batches; each prediction is resized (bilinear) back to bucket size;
* each is shrunk to the reference size (bucket ÷ 2) with `cv2.INTER_AREA`;
* the clip is normalised to 0..255 with ONE min/max taken over all its frames, not per frame: per-frame min/max
  makes depth videos flicker (shared/reference/extractors.md §3);
* the result is grey in 3 channels, near = white and far = black (the ControlNet / IC-LoRA depth convention).

No weights ship with avctl and there is no weightless fallback (a weightless proxy is not depth, extractors.md §2.1):
the weights are looked up in the `weights` directory, then `$AVCTL_HOME/weights/depth-anything-v2`, then the local
Hugging Face cache (never the network), and a missing model raises `MissingWeights` when the extractor is built.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np

from avctl.errors import BadInput, BadUsage, MissingWeights
from avctl.modalities.base import Clip, Control, EvalInput, FidelityResult, Modality, weight_places

BACKEND = "depth-anything-v2"
DEFAULT_MODEL = "depth-anything/Depth-Anything-V2-Small-hf"
#: Backend name → Hugging Face repository of its default weights.
BACKENDS = {BACKEND: DEFAULT_MODEL}
NORMALISATION = "clip-wide min/max of relative inverse depth, near = white"


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


class DepthAnythingExtractor:
    """Depth-Anything(-V2) via transformers, loaded once; `__call__` renders one clip, frames in batches."""

    backend = BACKEND

    def __init__(self, model: Any, processor: Any, *, source: str, device: str, batch_size: int = 8) -> None:
        self.model = model
        self.processor = processor
        self.device = device
        self.batch_size = batch_size
        self.source = source
        self.version = f"1 ({source}, {NORMALISATION}, INTER_AREA)"

    @classmethod
    def from_pretrained(cls, path_or_id: str | Path = DEFAULT_MODEL, device: str | None = None,
                        batch_size: int = 8) -> DepthAnythingExtractor:
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

    def __call__(self, clip: Clip) -> Control:
        return Control(frames=render_depth(self.predict(clip.frames), clip.reference_size))


def render_depth(depth: np.ndarray, reference_size: tuple[int, int]) -> np.ndarray:
    """[F, H, W] relative inverse depth → [F, h, w, 3] uint8 grey: each frame shrunk to `reference_size` (h, w) with
    INTER_AREA, then ONE min/max over the whole clip maps it to 0..255 (near = white). A constant clip renders black.

    Normalising after the shrink keeps the full 0..255 range in the reference (averaging would otherwise pull the
    extremes in)."""
    height, width = reference_size
    small = np.empty((len(depth), height, width), dtype=np.float32)  # [F, h, w]
    for i, frame in enumerate(depth.astype(np.float32, copy=False)):
        small[i] = frame if frame.shape == (height, width) else cv2.resize(
            frame, (width, height), interpolation=cv2.INTER_AREA)
    low, high = float(small.min()), float(small.max())
    scale = 255.0 / (high - low) if high > low else 0.0
    grey = np.round(np.clip((small - low) * scale, 0, 255)).astype(np.uint8)  # [F, h, w]
    return np.repeat(grey[..., None], 3, axis=-1)


def depth_extractor(weights: Path | None = None, backend: str | None = None) -> DepthAnythingExtractor:
    """The `depth` modality's factory (called once per worker). Weights: `weights` (a model dir, or a dir holding
    `<backend>/`), then `$AVCTL_HOME/weights/<backend>`, then the local Hugging Face cache; else `MissingWeights`."""
    backend = backend or BACKEND
    if backend not in BACKENDS:
        raise BadUsage(f"unknown depth backend {backend!r}; known: {', '.join(BACKENDS)}")
    repo_id = BACKENDS[backend]
    places = weight_places(weights, backend)
    for place in places:
        if _is_model_dir(place):
            return DepthAnythingExtractor.from_pretrained(place)
    if _cached_repo(repo_id):
        return DepthAnythingExtractor.from_pretrained(repo_id)
    searched = ", ".join([*(str(p) for p in places), "the local Hugging Face cache"])
    raise MissingWeights(f"no {backend} depth weights in {searched}; "
                         + _download_hint(repo_id, places[:1] or []))


def depth_fidelity(inp: EvalInput) -> FidelityResult:
    """`avctl eval` for depth: depth re-estimated on the output with this modality's own extractor, against the
    control (`avctl.metrics.depth_agreement`); not available when the model is not found (none ships)."""
    from avctl.metrics import cached_extractor, depth_agreement, read_control_video

    result = FidelityResult()
    names = ("depth_correlation", "depth_aligned_rmse")
    try:
        extractor = cached_extractor(inp.modality, inp.weights)
    except MissingWeights as exc:
        for name in names:
            result.missing[name] = ("re-estimating depth on the output needs the depth extractor's model "
                                    f"(Depth-Anything-V2): {exc}")
        return result
    control, count = read_control_video(inp.control, inp.output.frames, result.compared, inp.modality.name)
    result.compared["fidelity_model"] = getattr(extractor, "version", inp.modality.name)
    try:
        result.metrics.update(depth_agreement(control[:count],
                                              extractor.predict(np.ascontiguousarray(inp.output.frames[:count]))))
    except BadInput as exc:
        for name in names:
            result.missing[name] = str(exc)
    return result


DEPTH = Modality(
    name="depth",
    category="spatial",
    description="Follow the depth map of a video.",
    streams=("video",),
    targets=("V.SA",),
    rank=128,
    steps=3000,
    train_samples=2000,
    downscale=2,
    context="noised",
    extractor=depth_extractor,
    extractor_note="Depth-Anything-V2-Small (transformers, hub weights from the local cache or a weights dir; "
    "no weightless fallback), per frame, normalised over the whole clip, near = white, INTER_AREA to half size",
    fidelity=depth_fidelity,
    fidelity_note="depth_correlation and depth_aligned_rmse: depth re-estimated on the output vs the control "
    "(needs the extractor's weights)",
)
