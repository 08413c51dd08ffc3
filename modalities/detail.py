"""Video detailing (paper §7): the reference is the target downscaled and upscaled back (bilinear), so the LoRA
learns to restore detail. Reference at full resolution.

Per clip a factor in [2, 4] is drawn from the clip key and the run seed (not from the process), area-downscale by
it, then bilinear upscale to the reference size.
"""

from __future__ import annotations

import cv2
import numpy as np

from avctl.dataset import clip_rng
from avctl.modalities.base import Clip, Control, EvalInput, FidelityResult, Modality

MIN_FACTOR = 2.0
MAX_FACTOR = 4.0


class DetailExtractor:
    """Weightless; deterministic per (clip key, seed)."""

    backend = "area-down-bilinear-up"
    version = f"1 (factor {MIN_FACTOR:g}–{MAX_FACTOR:g} per clip, OpenCV {cv2.__version__})"

    def factor(self, clip: Clip) -> float:
        return float(clip_rng(clip.key, clip.seed, "detail").uniform(MIN_FACTOR, MAX_FACTOR))

    def __call__(self, clip: Clip) -> Control:
        height, width = clip.reference_size
        factor = self.factor(clip)
        frame_h, frame_w = clip.frames.shape[1:3]
        small = (max(1, round(frame_w / factor)), max(1, round(frame_h / factor)))
        out = np.empty((len(clip.frames), height, width, 3), dtype=np.uint8)  # [F, h, w, 3]
        for i, frame in enumerate(clip.frames):
            low = cv2.resize(frame, small, interpolation=cv2.INTER_AREA)
            out[i] = cv2.resize(low, (width, height), interpolation=cv2.INTER_LINEAR)
        return Control(frames=out)


def detail_fidelity(inp: EvalInput) -> FidelityResult:
    """`avctl eval` for detail: lowres_psnr, the output against the degraded control after shrinking both by the
    largest degradation factor (the output must keep the control's coarse content; the detail is its own)."""
    from avctl.metrics import lowres_psnr, read_control_video

    result = FidelityResult()
    control, count = read_control_video(inp.control, inp.output.frames, result.compared, inp.modality.name)
    result.metrics["lowres_psnr"] = lowres_psnr(control[:count], inp.output.frames[:count], MAX_FACTOR)
    result.compared["lowres_factor"] = MAX_FACTOR
    return result


DETAIL = Modality(
    name="detail",
    category="editing",
    description="Add detail to a low-resolution or blurry video (video detailing).",
    streams=("video",),
    targets=("V.SA", "V.CA", "V.FF"),
    rank=128,
    steps=200,
    train_samples=200,
    downscale=1,
    context="noised",
    extractor=DetailExtractor,
    extractor_note="area downscale by a per-clip factor in [2, 4], bilinear upscale back (weightless)",
    fidelity=detail_fidelity,
    fidelity_note="lowres_psnr: output vs control, both shrunk 4× (coarse content kept)",
)
