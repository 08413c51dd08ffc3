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

import cv2
import numpy as np

from avctl.depth_model import (  # the model lives in the library (the camera controls use it too); re-exported
    BACKEND,  # noqa: F401
    BACKENDS,  # noqa: F401
    DEFAULT_MODEL,  # noqa: F401
    DepthAnything,
    load_depth_model,
)
from avctl.errors import BadInput, MissingWeights
from avctl.modalities.base import Clip, Control, EvalInput, FidelityResult, Modality

NORMALISATION = "clip-wide min/max of relative inverse depth, near = white"


class DepthAnythingExtractor(DepthAnything):
    """The depth modality's extractor: `DepthAnything` whose `__call__` renders one clip (`render_depth`)."""

    @property
    def version(self) -> str:
        return f"1 ({self.source}, {NORMALISATION}, INTER_AREA)"

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
    return load_depth_model(weights, backend, DepthAnythingExtractor)



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
