"""Inpainting and outpainting (paper §7): one LoRA for both. The reference is the target with the holes painted
pure green #66FF00 (the mask travels inside the reference video); the mask itself is also saved (255 = hole) for
masked metrics and previews.

One mask per clip, static over time, drawn from the clip key and the run seed: an interior rectangle, free-form
thick strokes, or a border (outpainting: a kept window, the rest masked), each covering 10–60 % of the frame.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from avctl.dataset import clip_rng
from avctl.errors import BadInput
from avctl.modalities.base import Clip, Control, EvalInput, FidelityResult, Modality

HOLE_COLOUR = (0x66, 0xFF, 0x00)
MIN_COVERAGE = 0.10
MAX_COVERAGE = 0.60
MASK_KINDS = ("rectangle", "free-form", "border")
_PIXEL_ROUNDING = 0.02  # rounding hole sizes to whole pixels moves the cover by < 2 % at 64 px


def rectangle_mask(rng: np.random.Generator, height: int, width: int, coverage: float) -> np.ndarray:
    """One axis-aligned hole of about `coverage` of the frame, anywhere inside it."""
    area = coverage * height * width
    aspect = math.exp(rng.uniform(math.log(0.5), math.log(2.0)))  # hole width / height
    hole_w = min(width, max(1, round(math.sqrt(area * aspect))))
    hole_h = min(height, max(1, round(area / hole_w)))
    hole_w = min(width, max(1, round(area / hole_h)))  # re-fit after clipping the height
    top = int(rng.integers(0, height - hole_h + 1))
    left = int(rng.integers(0, width - hole_w + 1))
    mask = np.zeros((height, width), dtype=np.uint8)  # [h, w]
    mask[top : top + hole_h, left : left + hole_w] = 255
    return mask


def border_mask(rng: np.random.Generator, height: int, width: int, coverage: float) -> np.ndarray:
    """Outpainting: a kept window of (1 − coverage) of the frame; everything outside it is a hole. The window spans
    the full height (left/right extension), the full width (top/bottom), or neither (all around)."""
    keep = 1.0 - coverage
    style = rng.choice(["sides", "top-bottom", "around"])
    if style == "sides":
        keep_h, keep_w = height, round(width * keep)
    elif style == "top-bottom":
        keep_h, keep_w = round(height * keep), width
    else:
        keep_h, keep_w = round(height * math.sqrt(keep)), round(width * math.sqrt(keep))
    keep_h, keep_w = max(1, keep_h), max(1, keep_w)
    top = int(rng.integers(0, height - keep_h + 1))
    left = int(rng.integers(0, width - keep_w + 1))
    mask = np.full((height, width), 255, dtype=np.uint8)  # [h, w]
    mask[top : top + keep_h, left : left + keep_w] = 0
    return mask


def free_form_mask(rng: np.random.Generator, height: int, width: int, coverage: float) -> np.ndarray:
    """Thick random strokes (random walks), added segment by segment until they cover `coverage`; a segment that
    would push the cover past the maximum is left out."""
    short = min(height, width)
    mask = np.zeros((height, width), dtype=np.uint8)  # [h, w]
    covered = 0.0
    for _attempt in range(400):  # each segment adds a few %, so this is never the limit in practice
        if covered >= coverage:
            break
        thickness = int(rng.integers(max(2, short // 16), max(3, short // 7) + 1))
        point = np.array([rng.uniform(0, width), rng.uniform(0, height)])
        angle = rng.uniform(0, 2 * math.pi)
        for _segment in range(int(rng.integers(2, 7))):
            angle += rng.uniform(-math.pi / 2, math.pi / 2)
            length = rng.uniform(0.1, 0.3) * short
            end = np.clip(point + length * np.array([math.cos(angle), math.sin(angle)]), 0, [width - 1, height - 1])
            trial = mask.copy()
            cv2.line(trial, tuple(int(v) for v in point), tuple(int(v) for v in end), 255, thickness)
            trial_cover = float(np.count_nonzero(trial)) / trial.size
            if trial_cover > MAX_COVERAGE:
                break
            mask, covered, point = trial, trial_cover, end
            if covered >= coverage:
                break
    return mask


class InpaintMaskExtractor:
    """Weightless; deterministic per (clip key, seed)."""

    backend = "random-masks"
    version = f"1 (rectangle / free-form / border, {MIN_COVERAGE:.0%}–{MAX_COVERAGE:.0%} cover, #66FF00)"

    def mask(self, clip: Clip) -> np.ndarray:
        """The clip's hole mask [h, w] at the reference size, uint8 255 = hole."""
        height, width = clip.reference_size
        rng = clip_rng(clip.key, clip.seed, "inpaint")
        kind = MASK_KINDS[int(rng.integers(len(MASK_KINDS)))]
        if kind == "free-form":
            # Strokes overshoot their target by up to one segment; aim below the maximum.
            return free_form_mask(rng, height, width, rng.uniform(MIN_COVERAGE, 0.5))
        coverage = rng.uniform(MIN_COVERAGE + _PIXEL_ROUNDING, MAX_COVERAGE - _PIXEL_ROUNDING)
        if kind == "border":
            return border_mask(rng, height, width, coverage)
        return rectangle_mask(rng, height, width, coverage)

    def __call__(self, clip: Clip) -> Control:
        height, width = clip.reference_size
        hole = self.mask(clip)
        frames = clip.frames
        if frames.shape[1:3] != (height, width):
            frames = np.stack([cv2.resize(f, (width, height), interpolation=cv2.INTER_AREA) for f in frames])
        reference = frames.copy()  # [F, h, w, 3]
        reference[:, hole > 0] = HOLE_COLOUR
        mask = np.broadcast_to(hole, (len(frames), height, width)).copy()  # [F, h, w]
        return Control(frames=reference, mask=mask)


def masked_fidelity(inp: EvalInput) -> FidelityResult:
    """`avctl eval` for inpaint: masked_psnr and masked_ssim of the output (resized to the control's size) against
    the control outside the hole mask; a video mask shortens the comparison to its length."""
    from avctl.metrics import masked_psnr, masked_ssim, read_control_video, read_mask, resize_frames

    result = FidelityResult()
    control, count = read_control_video(inp.control, inp.output.frames, result.compared, inp.modality.name)
    if inp.mask is None:
        result.missing["masked_psnr"] = result.missing["masked_ssim"] = inp.mask_missing or "no mask given"
        return result
    height, width = control.shape[1:3]
    holes = read_mask(inp.mask, width, height)
    if len(holes) > 1:
        count = min(count, len(holes))
        holes = holes[:count]
        result.compared["frames"] = count
    output = resize_frames(inp.output.frames[:count], width, height)
    try:
        result.metrics["masked_psnr"] = masked_psnr(control[:count], output, holes)
        result.metrics["masked_ssim"] = masked_ssim(control[:count], output, holes)
    except BadInput as exc:
        raise BadInput(f"{inp.mask}: {exc}") from exc
    return result


INPAINT = Modality(
    name="inpaint",
    category="editing",
    description="Fill masked regions (inpainting) or extend the frame (outpainting); holes painted #66FF00.",
    streams=("video",),
    targets=("V.SA",),
    rank=128,
    steps=1000,
    train_samples=1000,
    downscale=1,
    context="noised",
    extractor=InpaintMaskExtractor,
    extractor_note="random rectangle, free-form and border masks covering 10–60 %, holes painted #66FF00 (weightless)",
    masked=True,
    fidelity=masked_fidelity,
    fidelity_note="masked_psnr and masked_ssim against the control outside the hole (needs the mask)",
)
