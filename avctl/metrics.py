"""Offline metrics behind `avctl eval`: control fidelity, temporal quality, audio envelopes, and a PNG contact sheet.

Everything here runs without model weights (see the reference notes, extractors.md §5). The metric functions are pure
functions on numpy arrays: video frames are uint8 [F, H, W, 3] RGB, masks uint8 [F, H, W] or [H, W] (nonzero = hole),
audio float [C, N] or [N]. A metric that needs a model avctl does not ship (depth and pose re-estimation, VBench's
DINO / CLIP / LAION / MUSIQ scores, BRISQUE) runs only when the user points at the model, and is otherwise never
approximated by a number: `evaluate_pair` lists it under "not_available" with the reason.

Control fidelity
    edge_f1                 Canny edges of the output against the control's edges, with a pixel tolerance.
    masked_psnr/ssim        output against the inpainting reference, outside the hole only (an empty mask: the
                            whole frame).
    lowres_psnr             output against the reference after shrinking both (coarse content only).
    colour_histogram_correlation   hue-saturation histograms of two videos (same colours, any viewpoint).
    audio_envelope_correlation   Pearson correlation of 20 ms RMS envelopes in dB.
    depth_agreement         depth re-estimated on the output vs the depth control (correlation, aligned RMSE).
    pose_agreement          skeletons re-detected on the output vs the pose control (tolerant pixel F1).
Temporal quality (on the output alone)
    warp_error              flow-warping error with a forward-backward occlusion check (0–255 scale, lower = steadier).
    flicker                 mean jump of the frame-mean brightness between consecutive frames (0–255, lower = steadier).
    temporal_flickering     VBench's score: 1 − (mean absolute consecutive-frame difference)/255 (higher = steadier).
    motion_smoothness       VBench's drop-odd-frames protocol, flow-based midpoint interpolation instead of AMT.
    dynamic_degree          VBench's top-5 % flow-magnitude rule with Farneback flow instead of RAFT (fraction of
                            moving frame pairs); vbench_is_dynamic is VBench's yes/no per video from the same rule.
The last three are weightless substitutes: their numbers follow VBench's protocol but are not comparable digit for
digit with VBench runs that used AMT-S / RAFT.
Evaluation
    evaluate_pair           one output against its control (reads the media; the control-fidelity metrics come from
                            the modality's own `Modality.fidelity` hook, built from the functions here).
    evaluate_runs           every generated mp4 in a folder that has an `avctl generate` sidecar.
    contact_sheet           a PNG grid of labelled videos with the metric values as caption.
Every control-fidelity metric M also gets M_chance (M against mismatched controls) and M_skill (0 = chance,
1 = perfect) from the generic wrapper in `avctl.skill`; see docs/eval.md.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np

from avctl.audio import ENVELOPE_WINDOW_S
from avctl.errors import AvctlError, BadInput, BadUsage, MissingWeights
from avctl.media import atomic_path, probe, read_audio, read_frames_or_image, read_video
from avctl.skill import Fidelity, add_skill

FlowMethod = Literal["farneback", "dis"]

CANNY_LOW = 100
CANNY_HIGH = 200
EDGE_THRESHOLD = 128  # grey level at or above which a (possibly area-shrunk) edge map counts as an edge
SSIM_SIGMA = 1.5  # Wang et al. 2004: 11×11 Gaussian window, σ = 1.5, K1 = 0.01, K2 = 0.03, L = 255
SSIM_WINDOW = 11
ENVELOPE_FLOOR_DB = -100.0  # RMS below 1e-5 (digital silence) is clamped here so log(0) never happens
DYNAMIC_THRESHOLD = 6.0  # VBench: flow-magnitude threshold in pixels at a 256-pixel short side
DYNAMIC_TOP_FRACTION = 0.05
ENVELOPE_SAMPLE_RATE = 16_000
FLOW_SHORT_SIDE = 256  # evaluate_pair runs the flow-based metrics at most this size (short side)

# Layout of `contact_sheet`, in pixels.
SHEET_GAP = 4
SHEET_LABEL_HEIGHT = 20
SHEET_CAPTION_LINE_HEIGHT = 20
SHEET_MAX_TILE_HEIGHT = 240
_FONT = cv2.FONT_HERSHEY_SIMPLEX
_FONT_SCALE = 0.45

#: Model-based scores that `evaluate_pair` always reports as not available, with the reason.
VBENCH_NOT_AVAILABLE = {
    "subject_consistency": "VBench subject consistency needs DINO ViT-B/16 weights, which avctl does not ship; pass a "
    "local DINO/ViT transformers folder with --clip-model",
    "background_consistency": "VBench background consistency needs CLIP ViT-B/32 weights, which avctl does not ship; "
    "pass a local CLIP transformers folder with --clip-model",
    "aesthetic_quality": "VBench aesthetic quality needs CLIP ViT-L/14 and the LAION aesthetic predictor "
    "(sa_0_4_vit_l_14_linear.pth), which avctl does not ship; there is no credible weightless substitute",
    "imaging_quality": "VBench imaging quality needs MUSIQ weights (musiq_spaq_ckpt-358bb6af.pth), which avctl does "
    "not ship; for the BRISQUE substitute install opencv-contrib-python and pass --brisque-model DIR",
}

BRISQUE_FILES = ("brisque_model_live.yml", "brisque_range_live.yml")


# ----------------------------------------------------------------------------------------------------------- checks
def _check_video(name: str, frames: np.ndarray, min_frames: int = 1) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise BadInput(f"{name}: frames must be uint8 [F, H, W, 3] RGB, got {frames.dtype} {tuple(frames.shape)}")
    if len(frames) < min_frames:
        raise BadInput(f"{name}: needs at least {min_frames} frames, got {len(frames)}")
    if frames.shape[1] < 2 or frames.shape[2] < 2:
        raise BadInput(f"{name}: frames are {frames.shape[2]}x{frames.shape[1]}; need at least 2x2 pixels")
    return frames


def _check_same_shape(name: str, a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape:
        raise BadInput(f"{name}: reference {tuple(a.shape)} and output {tuple(b.shape)} differ; trim to the same "
                       "frame count and resize to the same size first")


def _grey(frame: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)  # [H, W] uint8


def _resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """INTER_AREA when shrinking both sides, INTER_CUBIC otherwise."""
    if image.shape[1] == width and image.shape[0] == height:
        return image
    shrinking = width <= image.shape[1] and height <= image.shape[0]
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_CUBIC)


def resize_frames(frames: np.ndarray, width: int, height: int) -> np.ndarray:
    """[F, H, W, 3] → [F, height, width, 3] by plain resizing (no crop; a different aspect is stretched):
    INTER_AREA when shrinking, INTER_CUBIC when enlarging."""
    if frames.shape[1:3] == (height, width):
        return frames
    return np.stack([_resize(frame, width, height) for frame in frames])


# ----------------------------------------------------------------------------------------------------------- edges
def _disk(radius: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def output_edges(output: np.ndarray, height: int, width: int) -> np.ndarray:
    """Binary edge maps [F, height, width] (bool) of output frames, by the rule `edge_f1` documents."""
    output = _check_video("edge_f1 output", output)
    out_h, out_w = output.shape[1:3]
    edges = np.empty((len(output), height, width), dtype=bool)  # [F, h, w]
    for i, frame in enumerate(output):
        if out_h >= height and out_w >= width:
            edge = cv2.Canny(_grey(frame), CANNY_LOW, CANNY_HIGH)  # at the output's own size, like the extractor
            if edge.shape != (height, width):
                edge = cv2.resize(edge, (width, height), interpolation=cv2.INTER_AREA)
        else:
            edge = cv2.Canny(_grey(_resize(frame, width, height)), CANNY_LOW, CANNY_HIGH)
        edges[i] = edge >= EDGE_THRESHOLD
    return edges


def edge_f1(control: np.ndarray, output: np.ndarray, tolerance_px: int = 2) -> float:
    """F1 of the output's Canny edges against the control's edges, with a distance tolerance.

    Control: an edge video (white edges on black, as the canny extractor writes it); its grey level ≥ 128 is an edge.
    Output: `cv2.Canny(grey, 100, 200)` per frame. When the output is at least as large as the control on both sides
    (the usual case: the canny reference is half size), Canny runs at the output's size and the edge map is shrunk
    to the control's size with INTER_AREA and thresholded at 128 — the same steps that made the control, so an output
    equal to the source gives exactly the control. When the output is smaller on either side, its frames are first
    resized (INTER_CUBIC) to the control's size and Canny runs there. A different aspect ratio is stretched.

    Precision = output edge pixels within `tolerance_px` of a control edge (control edges dilated with a disk of
    diameter 2t+1) / output edge pixels; recall = control edge pixels within the tolerance of an output edge / control
    edge pixels. The tolerance is in control-resolution pixels. Counts are summed over all frames before dividing.
    No edges in either → 1.0; edges in only one → 0.0. Both videos must have the same frame count.
    """
    control = _check_video("edge_f1 control", control)
    output = _check_video("edge_f1 output", output)
    if len(control) != len(output):
        raise BadInput(f"edge_f1: control has {len(control)} frames and output {len(output)}; trim both to the same "
                       "count first")
    if tolerance_px < 0:
        raise BadUsage(f"edge_f1: tolerance_px must be ≥ 0, got {tolerance_px}")
    height, width = control.shape[1:3]
    out_edges = output_edges(output, height, width)  # [F, h, w] bool
    ctrl_edges = np.stack([_grey(frame) >= EDGE_THRESHOLD for frame in control])  # [F, h, w] bool
    return tolerant_f1(ctrl_edges, out_edges, tolerance_px)


def tolerant_f1(reference: np.ndarray, found: np.ndarray, tolerance_px: int) -> float:
    """F1 of two binary pixel sets [F, h, w] with a distance tolerance: precision = `found` pixels within
    `tolerance_px` of a `reference` pixel (a disk of diameter 2t+1) / `found` pixels, recall the other way round;
    counts summed over all frames. Both empty → 1.0; one empty → 0.0."""
    kernel = _disk(tolerance_px)
    found_total = ref_total = found_matched = ref_matched = 0
    for ref, hit in zip(reference, found, strict=True):
        ref_near = cv2.dilate(ref.astype(np.uint8), kernel) > 0
        hit_near = cv2.dilate(hit.astype(np.uint8), kernel) > 0
        found_total += int(hit.sum())
        ref_total += int(ref.sum())
        found_matched += int((hit & ref_near).sum())
        ref_matched += int((ref & hit_near).sum())
    if found_total == 0 and ref_total == 0:
        return 1.0
    if found_total == 0 or ref_total == 0:
        return 0.0
    precision, recall = found_matched / found_total, ref_matched / ref_total
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


# ------------------------------------------------------------------------------------- model-based control fidelity
def depth_agreement(control: np.ndarray, output_depth: np.ndarray) -> dict[str, float]:
    """How well depth re-estimated on the output agrees with a depth control.

    `control` [F, h, w, 3] uint8: a depth video as the depth extractor renders it (grey, near = white, one min/max
    over the clip), read as disparity in 0..1. `output_depth` [F, H, W] float: the depth model's relative inverse
    depth on the output frames (un-normalised), shrunk to h × w with INTER_AREA. Both are only defined up to scale
    and shift, so the output is fitted onto the control by least squares (one scale and shift for the whole clip,
    as the extractor normalises per clip). Returns:
    - depth_correlation: Pearson correlation over all pixels (1 = same relative depth; invariant to scale/shift);
    - depth_aligned_rmse: RMSE of the fitted output against the control, in units of the control's 0..1 range.
    A constant control or output has no relative depth to compare: BadInput."""
    control = _check_video("depth control", control)
    output_depth = np.asarray(output_depth, dtype=np.float32)
    if output_depth.ndim != 3 or len(output_depth) != len(control):
        raise BadInput(f"depth_agreement: output depth must be [F, H, W] with F = {len(control)}, got "
                       f"{output_depth.shape}")
    height, width = control.shape[1:3]
    target = np.stack([_grey(frame) for frame in control]).astype(np.float64) / 255.0  # [F, h, w]
    found = np.stack([d if d.shape == (height, width) else cv2.resize(d, (width, height),
                                                                        interpolation=cv2.INTER_AREA)
                      for d in output_depth]).astype(np.float64)  # [F, h, w]
    t, o = target.ravel(), found.ravel()
    if t.std() == 0 or o.std() == 0:
        which = "control" if t.std() == 0 else "output's re-estimated depth"
        raise BadInput(f"the {which} is constant: no relative depth to compare")
    correlation = float(np.corrcoef(t, o)[0, 1])
    design = np.stack([o, np.ones_like(o)], axis=1)
    (scale, shift), *_ = np.linalg.lstsq(design, t, rcond=None)
    rmse = float(np.sqrt(np.mean((scale * o + shift - t) ** 2)))
    return {"depth_correlation": correlation, "depth_aligned_rmse": rmse}


POSE_PIXEL_LEVEL = 40  # a pose drawing's pixel is "skeleton" when its brightest channel reaches this (on black)
POSE_TOLERANCE_PX = 3


def pose_agreement(control: np.ndarray, output_pose: np.ndarray, tolerance_px: int = POSE_TOLERANCE_PX) -> float:
    """F1 (`tolerant_f1`) between the skeleton pixels of a pose control and of the skeletons re-detected on the
    output and drawn the same way (both [F, h, w, 3] uint8 on black, same size). Colour is ignored: a limb drawn in
    the right place counts whichever limb it is."""
    control = _check_video("pose control", control)
    output_pose = _check_video("re-detected pose", output_pose)
    _check_same_shape("pose_agreement", control, output_pose)
    return tolerant_f1(control.max(-1) >= POSE_PIXEL_LEVEL, output_pose.max(-1) >= POSE_PIXEL_LEVEL, tolerance_px)


# ----------------------------------------------------------------------------------------------------- masked metrics
def _valid_mask(mask: np.ndarray, frames: np.ndarray) -> np.ndarray:
    """[F, H, W] bool, True where the pixel is kept (outside the hole)."""
    mask = np.asarray(mask)
    count, height, width = frames.shape[:3]
    if mask.ndim == 2:
        mask = mask[None]
    if mask.ndim != 3 or mask.shape[1:] != (height, width) or len(mask) not in (1, count):
        raise BadInput(f"mask {tuple(mask.shape)} does not fit frames {tuple(frames.shape[:3])}; it must be [H, W] "
                       "or [F, H, W] at the frames' size")
    valid = np.broadcast_to(mask == 0, (count, height, width))
    if not valid.any():
        raise BadInput("the mask covers every pixel, so there is nothing outside it to compare")
    return valid


def masked_psnr(reference: np.ndarray, output: np.ndarray, mask: np.ndarray) -> float:
    """PSNR in dB outside the hole: 10·log10(255² / MSE), the MSE taken over every RGB value of every kept pixel of
    every frame (pooled, not a mean of per-frame PSNRs). Mask: uint8 [F, H, W] or [H, W], nonzero = hole (ignored).
    Identical kept pixels → +inf."""
    reference = _check_video("masked_psnr reference", reference)
    output = _check_video("masked_psnr output", output)
    _check_same_shape("masked_psnr", reference, output)
    valid = _valid_mask(mask, reference)  # [F, H, W]
    diff = reference[valid].astype(np.float64) - output[valid].astype(np.float64)  # [n, 3]
    mse = float(np.mean(diff * diff))
    return math.inf if mse == 0 else 10.0 * math.log10(255.0**2 / mse)


def _gauss(image: np.ndarray) -> np.ndarray:
    return cv2.GaussianBlur(image, (SSIM_WINDOW, SSIM_WINDOW), SSIM_SIGMA, borderType=cv2.BORDER_REFLECT)


def masked_ssim(reference: np.ndarray, output: np.ndarray, mask: np.ndarray) -> float:
    """SSIM outside the hole, on grey (`cv2.COLOR_RGB2GRAY`), Wang et al.'s Gaussian-window form (11×11, σ = 1.5,
    K1 = 0.01, K2 = 0.03, L = 255), averaged over kept pixels of all frames.

    The local means, variances and covariance at each pixel are Gaussian-weighted over kept pixels only (normalised
    convolution: each statistic is blurred with the kept-pixel weights and divided by the blurred weights), so hole
    pixels influence nothing — not even the windows of kept pixels next to the hole. Without a hole this is exactly
    the standard SSIM. Mask: uint8 [F, H, W] or [H, W], nonzero = hole."""
    reference = _check_video("masked_ssim reference", reference)
    output = _check_video("masked_ssim output", output)
    _check_same_shape("masked_ssim", reference, output)
    valid = _valid_mask(mask, reference)  # [F, H, W]
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    total, count = 0.0, 0
    for ref_frame, out_frame, keep in zip(reference, output, valid, strict=True):
        if not keep.any():
            continue
        weight = keep.astype(np.float64)
        x = _grey(ref_frame).astype(np.float64) * weight
        y = _grey(out_frame).astype(np.float64) * weight
        norm = np.maximum(_gauss(weight), 1e-12)  # > 0 at every kept pixel (its own weight)
        mu_x, mu_y = _gauss(x) / norm, _gauss(y) / norm
        var_x = _gauss(x * x) / norm - mu_x * mu_x
        var_y = _gauss(y * y) / norm - mu_y * mu_y
        cov = _gauss(x * y) / norm - mu_x * mu_y
        ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
        total += float(ssim_map[keep].sum())
        count += int(keep.sum())
    return total / count


def lowres_psnr(reference: np.ndarray, output: np.ndarray, factor: float) -> float:
    """PSNR in dB of the output against the reference after both are shrunk by `factor` (INTER_AREA, to the
    reference's size ÷ factor; the output is first resized to the reference's size): agreement of the coarse
    content only, the detail above that scale left free. The first min(F) frames; identical → +inf."""
    reference = _check_video("lowres_psnr reference", reference)
    output = _check_video("lowres_psnr output", output)
    count = min(len(reference), len(output))
    height, width = reference.shape[1:3]
    small = (max(2, round(width / factor)), max(2, round(height / factor)))
    a = resize_frames(reference[:count], *small)
    b = resize_frames(resize_frames(output[:count], width, height), *small)
    return masked_psnr(a, b, np.zeros(a.shape[1:3], np.uint8))


def colour_histogram_correlation(a: np.ndarray, b: np.ndarray, bins: tuple[int, int] = (30, 32)) -> float:
    """Correlation (OpenCV HISTCMP_CORREL, 1 = same) of the hue-saturation histograms of two videos, each pooled
    over all its frames: whether they show the same colours, wherever and from whichever viewpoint."""
    def histogram(frames: np.ndarray) -> np.ndarray:
        hsv = np.concatenate([cv2.cvtColor(f, cv2.COLOR_RGB2HSV) for f in frames])  # frames stacked along y
        hist = cv2.calcHist([hsv], [0, 1], None, list(bins), [0, 180, 0, 256])
        return cv2.normalize(hist, hist).astype(np.float32)

    a = _check_video("colour_histogram_correlation a", a)
    b = _check_video("colour_histogram_correlation b", b)
    return float(cv2.compareHist(histogram(a), histogram(b), cv2.HISTCMP_CORREL))


# ---------------------------------------------------------------------------------------------------------- flow
_DIS: dict[str, Any] = {}


def optical_flow(a: np.ndarray, b: np.ndarray, method: FlowMethod = "farneback") -> np.ndarray:
    """Dense flow [H, W, 2] float32 from grey uint8 image a to b, such that a(p) ≈ b(p + flow(p)).
    Farneback: pyramid 0.5 × 3 levels, window 15, 3 iterations, poly_n 5, σ 1.2. DIS: OpenCV's "medium" preset."""
    if method == "farneback":
        return cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 3, 15, 3, 5, 1.2, 0)
    if method == "dis":
        if "medium" not in _DIS:
            _DIS["medium"] = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
        return _DIS["medium"].calc(a, b, None)
    raise BadUsage(f"flow method {method!r} is not one of: farneback, dis")


def _grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    return xs, ys


def _sample(image: np.ndarray, flow: np.ndarray, border: int = cv2.BORDER_CONSTANT) -> np.ndarray:
    """image sampled at p + flow(p) (bilinear)."""
    xs, ys = _grid(*flow.shape[:2])
    return cv2.remap(image, xs + flow[..., 0], ys + flow[..., 1], cv2.INTER_LINEAR, borderMode=border)


def warp_error(frames: np.ndarray, method: FlowMethod = "farneback") -> float:
    """Flow-warping error (Lai et al. 2018 style), lower = temporally steadier.

    For each consecutive pair (t, t+1): forward flow F (t → t+1) and backward flow B (t+1 → t) on grey frames; frame
    t+1 is warped onto t by sampling it at p + F(p). A pixel is kept when p + F(p) lands inside the frame and the
    forward-backward check passes: |F + B(p + F)|² < 0.01·(|F|² + |B(p + F)|²) + 0.5 (Sundaram et al. 2010).
    The pair's error is the mean absolute RGB difference (0–255 scale) between frame t and the warped frame t+1 over
    kept pixels; the result is the mean over pairs (pairs with no kept pixel are left out)."""
    frames = _check_video("warp_error", frames, min_frames=2)
    height, width = frames.shape[1:3]
    xs, ys = _grid(height, width)
    greys = [_grey(frame) for frame in frames]
    errors = []
    for t in range(len(frames) - 1):
        fwd = optical_flow(greys[t], greys[t + 1], method)
        bwd = optical_flow(greys[t + 1], greys[t], method)
        map_x, map_y = xs + fwd[..., 0], ys + fwd[..., 1]
        inside = (map_x >= 0) & (map_x <= width - 1) & (map_y >= 0) & (map_y <= height - 1)
        bwd_at = cv2.remap(bwd, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        round_trip = np.sum((fwd + bwd_at) ** 2, axis=-1)
        bound = 0.01 * (np.sum(fwd**2, axis=-1) + np.sum(bwd_at**2, axis=-1)) + 0.5
        keep = inside & (round_trip < bound)
        if not keep.any():
            continue
        warped = cv2.remap(frames[t + 1], map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        diff = np.abs(frames[t].astype(np.float32) - warped.astype(np.float32))  # [H, W, 3]
        errors.append(float(diff[keep].mean()))
    if not errors:
        raise BadInput("warp_error: the forward-backward check rejected every pixel of every frame pair")
    return float(np.mean(errors))


# ----------------------------------------------------------------------------------------------------- flicker
def flicker(frames: np.ndarray) -> float:
    """Brightness flicker: mean over consecutive pairs of |mean grey(t+1) − mean grey(t)| (0–255, lower = steadier).
    Only global brightness pumping counts; motion that keeps the mean brightness costs nothing."""
    frames = _check_video("flicker", frames, min_frames=2)
    means = np.array([_grey(frame).mean(dtype=np.float64) for frame in frames])
    return float(np.mean(np.abs(np.diff(means))))


def temporal_flickering(frames: np.ndarray) -> float:
    """VBench's Temporal Flickering score: (255 − mean absolute difference of consecutive frames)/255, the difference
    averaged over all RGB values of each pair, then over pairs (higher = steadier; 1.0 = a frozen clip). VBench scores
    it on static-scene videos only, because motion also counts as difference."""
    frames = _check_video("temporal_flickering", frames, min_frames=2)
    maes = [float(cv2.absdiff(frames[t], frames[t + 1]).mean()) for t in range(len(frames) - 1)]
    return (255.0 - float(np.mean(maes))) / 255.0


# ------------------------------------------------------------------------------------------------- VBench motion
def interpolate_midpoint(a: np.ndarray, b: np.ndarray, method: FlowMethod = "farneback") -> np.ndarray:
    """The frame halfway between RGB frames a and b: with F = flow(a → b) and G = flow(b → a), the mid frame at q is
    the mean of a(q − F(q)/2) and b(q − G(q)/2) (the midpoint's flow approximated by the end-point flow at the same
    pixel, fine for smooth motion; borders replicated). uint8 [H, W, 3]."""
    grey_a, grey_b = _grey(a), _grey(b)
    fwd = optical_flow(grey_a, grey_b, method)
    bwd = optical_flow(grey_b, grey_a, method)
    from_a = _sample(a, -0.5 * fwd, cv2.BORDER_REPLICATE).astype(np.float32)
    from_b = _sample(b, -0.5 * bwd, cv2.BORDER_REPLICATE).astype(np.float32)
    return np.clip(np.rint((from_a + from_b) / 2), 0, 255).astype(np.uint8)


def motion_smoothness(frames: np.ndarray, method: FlowMethod = "farneback") -> float:
    """VBench's Motion Smoothness protocol with a weightless interpolator: drop the odd frames, rebuild each odd frame
    2k+1 from its even neighbours 2k and 2k+2 (`interpolate_midpoint`, flow-based, in place of VBench's AMT-S
    network), and score 1 − mean(|rebuilt − real|)/255, the absolute difference averaged over RGB values and then
    over rebuilt frames (higher = smoother). A last odd frame without a right neighbour is left out, as in VBench.
    Not comparable digit for digit with VBench numbers made with AMT-S."""
    frames = _check_video("motion_smoothness", frames, min_frames=3)
    maes = []
    for odd in range(1, len(frames) - 1, 2):
        rebuilt = interpolate_midpoint(frames[odd - 1], frames[odd + 1], method)
        maes.append(float(cv2.absdiff(rebuilt, frames[odd]).mean()))
    return (255.0 - float(np.mean(maes))) / 255.0


def _dynamic_scores(frames: np.ndarray, method: FlowMethod) -> list[float]:
    """Per consecutive pair: the mean of the top 5 % flow magnitudes (VBench's `get_score`)."""
    greys = [_grey(frame) for frame in frames]
    height, width = frames.shape[1:3]
    cut = max(1, int(height * width * DYNAMIC_TOP_FRACTION))
    scores = []
    for t in range(len(frames) - 1):
        flow = optical_flow(greys[t], greys[t + 1], method)
        magnitude = np.sqrt(np.sum(flow.astype(np.float64) ** 2, axis=-1)).ravel()
        scores.append(float(np.mean(np.partition(magnitude, magnitude.size - cut)[-cut:])))
    return scores


def _vbench_sampling(frames: np.ndarray, fps: float | None) -> tuple[np.ndarray, float]:
    """VBench's frame sampling (every round(fps/8)-th frame) and threshold factor max(1, 8/fps); none without fps."""
    if fps is None:
        return frames, 1.0
    if fps <= 0:
        raise BadUsage(f"dynamic_degree: fps must be positive, got {fps}")
    return frames[:: max(1, round(fps / 8))], max(1.0, 8.0 / fps)


def _dynamic(
    name: str, frames: np.ndarray, threshold: float, fps: float | None, method: FlowMethod
) -> tuple[int, int, int]:
    """(moving pairs, pairs, pairs VBench needs to call the video dynamic) after VBench's sampling."""
    frames = _check_video(name, frames, min_frames=2)
    sampled, factor = _vbench_sampling(frames, fps)
    if len(sampled) < 2:
        raise BadInput(f"{name}: {len(frames)} frames at {fps:g} fps leave fewer than 2 after VBench's sampling")
    limit = factor * threshold * min(frames.shape[1:3]) / 256.0
    scores = _dynamic_scores(sampled, method)
    return sum(score > limit for score in scores), len(scores), round(4 * len(sampled) / 16.0)


def dynamic_degree(
    frames: np.ndarray, threshold: float = DYNAMIC_THRESHOLD, fps: float | None = None, method: FlowMethod = "farneback"
) -> float:
    """Fraction of consecutive frame pairs that move, by VBench's Dynamic Degree rule with Farneback flow in place of
    RAFT (a weightless substitute): a pair moves when the mean of its top 5 % flow magnitudes exceeds
    `threshold` × min(H, W)/256 pixels (VBench: 6 px at a 256-pixel short side). With `fps`, frames are first
    sampled as VBench does (every round(fps/8)-th frame) and the threshold multiplied by max(1, 8/fps).
    VBench itself turns these pairs into a yes/no per video (`vbench_is_dynamic`); this is the graded fraction."""
    moving, pairs, _needed = _dynamic("dynamic_degree", frames, threshold, fps, method)
    return moving / pairs


def vbench_is_dynamic(frames: np.ndarray, fps: float, method: FlowMethod = "farneback") -> bool:
    """VBench's per-video Dynamic Degree decision (averaged over videos it gives the benchmark's DD): after VBench's
    sampling, the video is dynamic when at least round(4 · sampled frames / 16) pairs exceed the threshold of
    `dynamic_degree`. Farneback flow in place of RAFT."""
    moving, _pairs, needed = _dynamic("vbench_is_dynamic", frames, DYNAMIC_THRESHOLD, fps, method)
    return moving >= needed


# ----------------------------------------------------------------------------------------------------------- audio
def rms_envelope_db(audio: np.ndarray, sample_rate: int, window_s: float = ENVELOPE_WINDOW_S) -> np.ndarray:
    """RMS of consecutive non-overlapping windows (default 20 ms; channels averaged first), in dB re full scale,
    floored at −100 dB. A trailing partial window is dropped (`avctl.audio.rms_envelope`)."""
    from avctl.audio import rms_envelope, to_mono

    rms = rms_envelope(to_mono(audio), sample_rate, window_s)
    return 20.0 * np.log10(np.maximum(rms, 10.0 ** (ENVELOPE_FLOOR_DB / 20.0)))


def audio_envelope_correlation(a: np.ndarray, b: np.ndarray, sample_rate: int) -> float:
    """Pearson correlation of the 20 ms RMS envelopes (dB, `rms_envelope_db`) of a and b, both at `sample_rate`.
    The longer envelope is cut to the shorter. Undefined (BadInput) when either envelope is constant, e.g. silence."""
    if sample_rate <= 0:
        raise BadUsage(f"audio_envelope_correlation: sample_rate must be positive, got {sample_rate}")
    env_a, env_b = rms_envelope_db(a, sample_rate), rms_envelope_db(b, sample_rate)
    count = min(len(env_a), len(env_b))
    if count < 2:
        raise BadInput("audio_envelope_correlation: needs at least two 20 ms windows of audio in both signals")
    env_a, env_b = env_a[:count], env_b[:count]
    if np.ptp(env_a) == 0 or np.ptp(env_b) == 0:
        raise BadInput("audio_envelope_correlation: an envelope is constant (silence?), so the correlation is "
                       "undefined")
    return float(np.corrcoef(env_a, env_b)[0, 1])


# ------------------------------------------------------------------------------------------------- contact sheet
_ASCII = str.maketrans({"—": "-", "–": "-", "−": "-", "×": "x", "·": "*", "…": "...", "≤": "<=", "≥": ">=",
                        "σ": "s", "’": "'", "“": '"', "”": '"'})


def _ascii(text: str) -> str:
    """OpenCV's Hershey fonts draw ASCII only: common typography becomes its ASCII look-alike, the rest '?'."""
    return text.translate(_ASCII).encode("ascii", "replace").decode("ascii")


def _wrap(text: str, width: int) -> list[str]:
    """Caption lines that fit `width` pixels (greedy word wrap; explicit newlines kept; ASCII only, see `_ascii`)."""
    text = _ascii(text)
    lines: list[str] = []
    for paragraph in text.splitlines():
        current = ""
        for word in paragraph.split():
            trial = f"{current} {word}" if current else word
            if current and cv2.getTextSize(trial, _FONT, _FONT_SCALE, 1)[0][0] > width:
                lines.append(current)
                current = word
            else:
                current = trial
        lines.append(current)
    return lines


def _column_indices(count: int, columns: int) -> list[int]:
    if count <= columns:
        return list(range(count))
    return [round(float(i)) for i in np.linspace(0, count - 1, columns)]


def contact_sheet(
    path: str | Path,
    rows: Sequence[tuple[str, np.ndarray]],
    n_columns: int = 6,
    caption: str = "",
    tile_height: int | None = None,
) -> Path:
    """Write a PNG grid: one row per labelled video (e.g. ("control", frames), ("output", frames)), `n_columns`
    frames per row at even intervals (first and last included; all frames when a video has fewer), and `caption`
    (e.g. the metric values) below, word-wrapped. Written atomically; returns the path.

    Layout: every tile is `tile_height` pixels high (default: the tallest video's height, at most 240), its width
    the video's aspect × that height (rounded). Each row is a 20-px label strip over its tiles; tiles and rows are
    separated and surrounded by 4-px gaps. Width = 4 + widest row's n·(tile width + 4); height = Σ rows
    (20 + tile_height + 4) + 4, plus, with a caption, 20 px per caption line + 4."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise BadUsage(f"{path}: a contact sheet is a PNG; give a path ending in .png")
    if not rows:
        raise BadUsage(f"{path}: no videos given for the contact sheet")
    if n_columns < 1:
        raise BadUsage(f"{path}: n_columns must be at least 1, got {n_columns}")
    videos = [(label, _check_video(f"contact sheet row {label!r}", frames)) for label, frames in rows]
    height = tile_height or min(SHEET_MAX_TILE_HEIGHT, max(frames.shape[1] for _, frames in videos))
    if height < 1:
        raise BadUsage(f"{path}: tile_height must be at least 1, got {tile_height}")

    strips: list[tuple[str, list[np.ndarray]]] = []
    for label, frames in videos:
        tile_w = max(1, round(frames.shape[2] * height / frames.shape[1]))
        tiles = [_resize(frames[i], tile_w, height) for i in _column_indices(len(frames), n_columns)]
        strips.append((label, tiles))
    sheet_w = SHEET_GAP + max(sum(tile.shape[1] + SHEET_GAP for tile in tiles) for _, tiles in strips)
    lines = _wrap(caption, sheet_w - 2 * SHEET_GAP) if caption.strip() else []
    sheet_h = len(strips) * (SHEET_LABEL_HEIGHT + height + SHEET_GAP) + SHEET_GAP
    if lines:
        sheet_h += len(lines) * SHEET_CAPTION_LINE_HEIGHT + SHEET_GAP

    sheet = np.full((sheet_h, sheet_w, 3), 32, dtype=np.uint8)  # [H, W, 3] RGB, dark grey
    white = (235, 235, 235)
    top = SHEET_GAP
    for label, tiles in strips:
        cv2.putText(sheet, _ascii(label), (SHEET_GAP, top + SHEET_LABEL_HEIGHT - 6), _FONT, _FONT_SCALE, white, 1,
                    cv2.LINE_AA)
        left = SHEET_GAP
        tile_top = top + SHEET_LABEL_HEIGHT
        for tile in tiles:
            sheet[tile_top : tile_top + height, left : left + tile.shape[1]] = tile
            left += tile.shape[1] + SHEET_GAP
        top = tile_top + height + SHEET_GAP
    for line in lines:
        top += SHEET_CAPTION_LINE_HEIGHT
        cv2.putText(sheet, line, (SHEET_GAP, top - 6), _FONT, _FONT_SCALE, white, 1, cv2.LINE_AA)

    ok, encoded = cv2.imencode(".png", cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
    if not ok:
        raise AvctlError(f"{path}: OpenCV could not encode the contact sheet as PNG")
    with atomic_path(path) as tmp:
        tmp.write_bytes(encoded.tobytes())
    return path


def envelope_frames(path: Path, width: int = 256, height: int = 64) -> np.ndarray:
    """An audio file's loudness envelope drawn as one RGB frame [1, height, width, 3] (a contact-sheet tile for an
    audio control): per column, the peak |amplitude| of that slice, mirrored about the middle."""
    audio = read_audio(path, 16_000, channels=1)
    if audio is None or audio.shape[1] == 0:
        raise BadInput(f"{path}: has no audio to draw")
    bins = np.array_split(np.abs(audio[0]), width)
    peaks = np.array([b.max() if len(b) else 0.0 for b in bins])  # [width] in [0, 1]
    frame = np.full((height, width, 3), 16, dtype=np.uint8)
    middle = height // 2
    for x, peak in enumerate(peaks):
        half = round(float(peak) * (middle - 1))
        frame[middle - half : middle + half + 1, x] = (90, 200, 120)
    return frame[None]


def _sheet_frames(path: Path) -> np.ndarray:
    """A control's frames for the contact sheet: the video, or the envelope of an audio-only control."""
    return read_video(path).frames if probe(path).has_video else envelope_frames(path)


def sheet_rows(results: Sequence[dict[str, Any]]) -> tuple[list[tuple[str, np.ndarray]], list[tuple[str, dict]]]:
    """Contact-sheet rows for evaluated generations (rows with "metrics", in the given order): each output under
    its control (an audio control drawn as its envelope), with a control row whenever the control differs from the
    previous one, so outputs of several clips each sit under their own control. A result whose media cannot be
    drawn gets a "sheet" note with the reason and is left off; the others still are drawn. Returns (rows, [(label,
    result)] for the outputs)."""
    rows: list[tuple[str, np.ndarray]] = []
    labels: list[tuple[str, dict]] = []
    previous: np.ndarray | None = None
    for r in results:
        if "metrics" not in r:
            continue
        try:
            control = _sheet_frames(Path(r["control"]))
            output = read_video(Path(r["video"])).frames
        except AvctlError as exc:
            r["sheet"] = f"not drawn: {exc}"
            continue
        if previous is None or control.shape != previous.shape or not np.array_equal(control, previous):
            rows.append(("control", control))
            previous = control
        label = Path(r["video"]).stem + (f" s={r['strength']}" if r.get("strength") is not None else "")
        rows.append((label, output))
        labels.append((label, r))
    return rows, labels


# -------------------------------------------------------------------------------------------------- evaluation
def read_mask(path: Path, width: int, height: int) -> np.ndarray:
    """A hole mask file (a video, as `avctl prepare` writes mask/<clip>.mp4, or a single image) as uint8 [F, h, w] or
    [1, h, w] at width×height: grey > 127 is a hole (255), resized with INTER_NEAREST."""
    frames = read_frames_or_image(path, "mask (pass the mask/<clip>.mp4 that `avctl prepare` wrote)")
    greys = np.stack([_grey(frame) for frame in frames])  # [F, H, W]
    masks = np.empty((len(greys), height, width), dtype=np.uint8)  # [F, h, w]
    for i, grey in enumerate(greys):
        hole = np.where(grey > 127, 255, 0).astype(np.uint8)
        masks[i] = hole if hole.shape == (height, width) else cv2.resize(hole, (width, height),
                                                                         interpolation=cv2.INTER_NEAREST)
    return masks


NO_SOURCE_CLIP = ("no source clip: `generate --from-video` records it, or pass --source with the clip the control "
                  "was drawn from")


def plain_canny_edges(source: Path, output: np.ndarray) -> np.ndarray:
    """Plain 1-px Canny edges [F, H, W] (bool) of the `source` clip at the OUTPUT's size: the source is fitted to the
    output's size (the rule `generate --from-video` uses) and Canny 100/200 runs there, as `avctl prepare canny`
    does at bucket size. The first min(F) frames of source and output."""
    from avctl.media import fit_to_bucket

    output = _check_video("edge_f1_plain output", output)
    clip = read_video(source)
    count = min(len(clip.frames), len(output))
    height, width = output.shape[1:3]
    fitted = fit_to_bucket(clip.frames[:count], width, height)
    return np.stack([cv2.Canny(_grey(frame), CANNY_LOW, CANNY_HIGH) > 0 for frame in fitted])


def edge_f1_at_output(reference: np.ndarray, output: np.ndarray, tolerance_px: int = 2) -> float:
    """F1 of the output's own Canny edges (at its own size) against `reference` edges [F, h, w] (bool), with the
    tolerance in OUTPUT pixels. A reference of another size is resized to the output's (nearest; only mismatched
    chance pairs need that); the first min(F) frames are compared."""
    output = _check_video("edge_f1 output", output)
    count = min(len(reference), len(output))
    height, width = output.shape[1:3]
    reference = reference[:count]
    if reference.shape[1:3] != (height, width):
        reference = np.stack([cv2.resize(r.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST) > 0
                              for r in reference])
    found = np.stack([cv2.Canny(_grey(frame), CANNY_LOW, CANNY_HIGH) > 0 for frame in output[:count]])
    return tolerant_f1(reference, found, tolerance_px)


def plain_canny_f1(source: Path, control_frames: np.ndarray | None, output: np.ndarray) -> float:
    """Edge F1 of `output` [F, H, W, 3] against the `source` clip's plain 1-px Canny edges, both at the OUTPUT's
    own size (`plain_canny_edges`, `edge_f1_at_output`), tolerance 2 output pixels. Not at the reference's size:
    there a 3-px line covers most of a 32-px frame and noise scores well. A control drawn with thick lines
    (`--line-width`) makes edge_f1 generous; this one measures the output against the clip's own edges.
    `control_frames` only caps the frame count (None: no cap)."""
    if control_frames is not None:
        output = output[: len(control_frames)]
    return edge_f1_at_output(plain_canny_edges(source, output), output)


def edge_f1_trimmed(control: np.ndarray, output: np.ndarray) -> float:
    """`edge_f1` on the first min(F) frames of both (the form `avctl.skill` scores mismatched controls with)."""
    count = min(len(control), len(output))
    return edge_f1(control[:count], output[:count])


def envelope_metric(control: np.ndarray, output: np.ndarray) -> float:
    """`audio_envelope_correlation` of mono audio at ENVELOPE_SAMPLE_RATE."""
    return audio_envelope_correlation(control, output, ENVELOPE_SAMPLE_RATE)


def read_control_video(control: Path, output: np.ndarray, compared: dict[str, Any],
                       what: str) -> tuple[np.ndarray, int]:
    """A video control's frames [F, h, w, 3] and how many frames to compare with `output` (the first min(F)),
    recording both counts and the control's size in `compared`. `what` names the control in the error."""
    if not probe(control).has_video:
        raise BadInput(f"{control}: has no video stream, but a {what} control is a video")
    frames = read_video(control).frames
    count = min(len(frames), len(output))
    height, width = frames.shape[1:3]
    compared.update(control_frames=len(frames), frames=count, width=width, height=height)
    return frames, count


@functools.lru_cache(maxsize=2)
def cached_extractor(modality: Any, weights: Path | None) -> Any:
    """A modality's extractor, loaded once per process, for fidelity metrics that re-estimate the control on the
    output (`eval --runs` re-estimates every video with it). MissingWeights when its model is not found."""
    from avctl.extractors import build_extractor

    return build_extractor(modality, weights)



def flow_frames(frames: np.ndarray, short_side: int = FLOW_SHORT_SIDE) -> np.ndarray:
    """The frames `evaluate_pair` runs the flow-based metrics on: shrunk (INTER_AREA, aspect kept) so the short side
    is at most `short_side` pixels; smaller clips are left as they are."""
    height, width = frames.shape[1:3]
    scale = short_side / min(height, width)
    if scale >= 1:
        return frames
    return resize_frames(frames, max(2, round(width * scale)), max(2, round(height * scale)))


def _temporal_metrics(
    frames: np.ndarray, fps: float, metrics: dict[str, Any], missing: dict[str, str], compared: dict[str, Any]
) -> None:
    small = flow_frames(frames)
    compared["flow_width"], compared["flow_height"] = small.shape[2], small.shape[1]

    def dynamic() -> tuple[float, bool]:
        moving, pairs, needed = _dynamic("dynamic_degree", small, DYNAMIC_THRESHOLD, fps, "farneback")
        return moving / pairs, moving >= needed

    computations = {
        "warp_error": lambda: warp_error(small),
        "flicker": lambda: flicker(frames),
        "temporal_flickering": lambda: temporal_flickering(frames),
        "motion_smoothness": lambda: motion_smoothness(small),
        "dynamic_degree": dynamic,
    }
    for name, compute in computations.items():
        try:
            value = compute()
        except BadInput as exc:
            missing[name] = str(exc)
            continue
        if name == "dynamic_degree":
            metrics["dynamic_degree"], metrics["vbench_is_dynamic"] = value
        else:
            metrics[name] = value
    if "dynamic_degree" in missing:
        missing["vbench_is_dynamic"] = missing["dynamic_degree"]


def feature_consistency(frames: np.ndarray, model_dir: Path, batch: int = 16) -> tuple[str, float]:
    """VBench-style consistency from a local image model: for every frame t ≥ 1, the mean of the cosine similarity
    of its embedding to frame 0's and to frame t−1's, averaged over t. A CLIP directory gives VBench's
    "background_consistency" (CLIP image features); a DINO / ViT directory its "subject_consistency" (the CLS
    feature). Loaded with transformers from the local folder only (no download, no remote code)."""
    import torch
    from transformers import AutoConfig, AutoImageProcessor, AutoModel

    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise BadInput(f"{model_dir}: not a transformers model folder (no config.json); give a local CLIP or DINO dir")
    frames = _check_video("video", frames, min_frames=2)
    config = AutoConfig.from_pretrained(model_dir, local_files_only=True)
    model = AutoModel.from_pretrained(model_dir, local_files_only=True).eval()
    processor = AutoImageProcessor.from_pretrained(model_dir, local_files_only=True)
    is_clip = hasattr(model, "get_image_features")
    feats = []
    with torch.no_grad():
        for start in range(0, len(frames), batch):
            pixels = processor(images=list(frames[start : start + batch]), return_tensors="pt")["pixel_values"]
            if is_clip:
                out = model.get_image_features(pixel_values=pixels)
                emb = out if isinstance(out, torch.Tensor) else out.pooler_output
            else:
                emb = model(pixel_values=pixels).last_hidden_state[:, 0]  # CLS token
            feats.append(torch.nn.functional.normalize(emb.float(), dim=-1))
    f = torch.cat(feats)  # [F, D], unit length
    to_first = (f[1:] * f[:1]).sum(-1)
    to_prev = (f[1:] * f[:-1]).sum(-1)
    name = "background_consistency" if is_clip or config.model_type == "clip" else "subject_consistency"
    return name, float(((to_first + to_prev) / 2).mean())


@dataclass(frozen=True)
class EvalModels:
    """Local models for the model-based metrics; a metric whose model is None is reported as not available."""

    clip_model: Path | None = None  # CLIP (background consistency) or DINO/ViT (subject consistency) folder
    weights: Path | None = None  # extractor weights for depth / pose re-estimation, as `avctl prepare --weights`
    brisque_model: Path | None = None  # folder with BRISQUE_FILES (needs opencv-contrib's cv2.quality)
    camera: str | None = None  # camera modalities: the PRESET[@STRENGTH] or trajectory .json generated with
    fov: float = 50.0  # vertical FOV of frame 0 for a camera preset


def brisque(frames: np.ndarray, model_dir: Path, samples: int = 8) -> float:
    """Mean BRISQUE score (0–100, lower = better looking) of up to `samples` evenly spaced frames, with OpenCV
    contrib's `cv2.quality.QualityBRISQUE_compute` and the model files `BRISQUE_FILES` in `model_dir`."""
    quality = getattr(cv2, "quality", None)
    if quality is None or not hasattr(quality, "QualityBRISQUE_compute"):
        raise MissingWeights("BRISQUE needs OpenCV's contrib module cv2.quality: pip install opencv-contrib-python "
                             "(it replaces opencv-python)")
    model, ranges = (Path(model_dir) / name for name in BRISQUE_FILES)
    if not (model.is_file() and ranges.is_file()):
        raise MissingWeights(f"{model_dir}: needs {BRISQUE_FILES[0]} and {BRISQUE_FILES[1]} (from opencv_contrib's "
                             "modules/quality/samples)")
    frames = _check_video("video", frames)
    picks = np.unique(np.linspace(0, len(frames) - 1, min(samples, len(frames))).round().astype(int))
    scores = [float(quality.QualityBRISQUE_compute(cv2.cvtColor(frames[i], cv2.COLOR_RGB2BGR), str(model),
                                                    str(ranges))[0]) for i in picks]
    return float(np.mean(scores))


def _registered(modality: str | None) -> Any:
    """The installed Modality of that name, or None (no name recorded, or the plugin is not installed)."""
    if modality is None:
        return None
    from avctl.modalities.base import all_modalities

    return all_modalities().get(modality)


def _evaluate(
    modality: str | None, control: Path, video: Path, mask: Path | None, mask_missing: str | None,
    models: EvalModels = EvalModels(), source: Path | None = None, source_missing: str | None = None,
) -> dict[str, Any]:
    output = read_video(video)
    metrics: dict[str, Any] = {}
    missing: dict[str, str] = {}
    compared: dict[str, Any] = {"video_frames": len(output.frames)}
    fidelity: dict[str, Fidelity] = {}  # the pairs `add_skill` scores against mismatched controls
    probe(control)  # a missing or unreadable control: one clear line
    found = _registered(modality)
    if modality is None:
        missing["control_fidelity"] = ("the LoRA records no modality, so no control-fidelity metric can be chosen; "
                                       "pass the modality explicitly")
    elif found is None or found.fidelity is None:
        missing["control_fidelity"] = f"no offline control-fidelity metric is implemented for modality {modality!r}"
    else:
        from avctl.modalities.base import EvalInput

        result = found.fidelity(EvalInput(
            modality=found, control=control, video=video, output=output, mask=mask, mask_missing=mask_missing,
            source=source, source_missing=source_missing, weights=models.weights, camera=models.camera,
            fov=models.fov))
        metrics.update(result.metrics)
        missing.update(result.missing)
        compared.update(result.compared)
        fidelity.update(result.chance)

    _temporal_metrics(output.frames, output.fps, metrics, missing, compared)
    missing.update(VBENCH_NOT_AVAILABLE)
    if models.clip_model is not None:
        name, value = feature_consistency(output.frames, models.clip_model)
        metrics[name] = value
        missing.pop(name, None)
    if models.brisque_model is not None:
        try:
            metrics["brisque"] = brisque(output.frames, models.brisque_model)
        except MissingWeights as exc:
            missing["brisque"] = str(exc)
    return {
        "modality": modality,
        "control": str(control),
        "video": str(video),
        "compared": compared,
        "metrics": metrics,
        "not_available": missing,
        "_fidelity": fidelity,
    }


def evaluate_pair(
    modality: str, control: Path, video: Path, mask: Path | None = None, source: Path | None = None,
    clip_model: Path | None = None, weights: Path | None = None, brisque_model: Path | None = None,
    camera: str | None = None, fov: float = 50.0,
) -> dict[str, Any]:
    """Evaluate one generated video against its control.

    Returns {"modality", "control", "video", "compared", "metrics": {name: value}, "not_available": {name: reason}}:
    - the modality's own control-fidelity metrics, from its `Modality.fidelity` hook (`avctl modalities` lists
      them; docs/eval.md describes each): e.g. edge F1 for canny, masked PSNR/SSIM for a `masked` modality (`mask`
      required: the mask/<clip>.mp4 `avctl prepare` writes, or an image), depth / pose agreement by re-running the
      extractor on the output (`weights` as for `avctl prepare --weights`), rotation error against `camera` (the
      preset or trajectory .json generated with) and `fov`, metrics against `source` (the clip the control was
      extracted from). A modality without a hook → "control_fidelity" not available.
    - always, on the output: warp_error, flicker, temporal_flickering, motion_smoothness, dynamic_degree and
      vbench_is_dynamic (a metric the clip is too short for is listed as not available with the reason). The
      flow-based ones (warp_error, motion_smoothness, dynamic_degree, vbench_is_dynamic) run on the output shrunk to
      a short side of at most 256 px (`flow_frames`; Farneback at 768×448 costs about a second per flow on a CPU);
      dynamic_degree and vbench_is_dynamic use VBench's fps-based frame sampling;
    - VBench's model-based scores (subject/background consistency, aesthetic and imaging quality) → not available,
      except the consistency score of `clip_model` (a local CLIP or DINO folder, `feature_consistency`); with
      `brisque_model`, also `brisque` (needs opencv-contrib).
    Control and output may differ in length (generated clips can lose the last frame): the first min(F) frames are
    compared (a video mask shortens that further). Different sizes are compared at the control's size: the output
    is resized to it (masked metrics) or its edges are (edge_f1); a different aspect ratio is stretched.
    Each fidelity metric M above also gets M_chance and M_skill (`avctl.skill.add_skill`: against the mirrored
    control here; `evaluate_runs` uses the other clips' controls).
    "compared" records the frame counts, the comparison size, the size the flow-based metrics ran at and how each
    chance level was formed ("chance")."""
    control, video = Path(control), Path(video)
    found = _registered(modality)
    if found is not None and found.masked and mask is None:
        raise BadInput(f"{video}: {modality} evaluation needs the hole mask; pass the mask/<clip>.mp4 that `avctl "
                       "prepare` wrote next to the control")
    models = EvalModels(clip_model, weights, brisque_model, camera, fov)
    source = Path(source) if source is not None else None
    result = _evaluate(modality, control, video, Path(mask) if mask is not None else None, None, models,
                       source=source)
    add_skill([result], [result.pop("_fidelity")])
    return result


def _control_path(item: str, sidecar: Path) -> Path | None:
    """A sidecar "control" entry ("NAME=PATH" or "PATH", as `avctl generate` records it) as an existing file: the
    path as written (relative to the working folder), else relative to the sidecar's folder."""
    candidates = [item]
    name, sep, rest = item.partition("=")
    if sep and name and "/" not in name:
        candidates.append(rest)
    for text in candidates:
        for path in (Path(text), sidecar.parent / text):
            if path.is_file():
                return path
    return None


def _dataset_mask(control: Path) -> Path | None:
    """Where `avctl prepare` puts a reference's mask: <dataset>/reference/<rel>.mp4 → <dataset>/mask/<rel>.mp4."""
    parts = control.parts
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] == "reference":
            candidate = Path(*parts[:i], "mask", *parts[i + 1 :]).with_suffix(".mp4")
            return candidate if candidate.is_file() else None
    return None


def _is_generate_extra(path: Path) -> bool:
    """Temp files and the side products `generate` writes next to an output (previews, extracted controls)."""
    return path.name.startswith(".") or path.name.endswith(".preview.mp4") or ".control-" in path.name


def evaluate_runs(runs_dir: Path, clip_model: Path | None = None, weights: Path | None = None,
                  brisque_model: Path | None = None) -> list[dict[str, Any]]:
    """Evaluate every `*.mp4` directly in `runs_dir` that has a `<stem>.json` sidecar from `avctl generate`, against
    its first control with the first modality (`evaluate_pair`), adding "sidecar", "strength", "seed" and "loras"
    from the sidecar. For a `masked` modality (inpaint), the mask is looked up where `avctl prepare` puts it (a
    control at <dataset>/reference/<rel>.mp4 → <dataset>/mask/<rel>.mp4); when there is none, the masked metrics
    are listed as not available. Videos that cannot be evaluated (no sidecar, no control, unreadable media) come back as
    {"video", "skipped": reason} rows, so one bad file does not stop the batch. A generation made with
    --from-video passes that clip as the modality's `source` (canny: edge_f1_plain; tracks: track_epe). Hidden
    files (temp files) are ignored.
    Rows are in file-name order."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise BadInput(f"{runs_dir}: not a folder; give the folder holding the generated .mp4 files")
    rows: list[dict[str, Any]] = []
    for video in sorted(p for p in runs_dir.glob("*.mp4") if not _is_generate_extra(p)):
        sidecar = video.with_suffix(".json")
        if not sidecar.is_file():
            rows.append({"video": str(video), "skipped": f"no sidecar {sidecar.name} (not made by `avctl generate`)"})
            continue
        try:
            meta = json.loads(sidecar.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            rows.append({"video": str(video), "skipped": f"{sidecar}: unreadable sidecar ({exc})"})
            continue
        if not isinstance(meta, dict):
            rows.append({"video": str(video), "skipped": f"{sidecar}: sidecar is not a JSON object"})
            continue
        controls = meta.get("control") or []
        if isinstance(controls, str):
            controls = [controls]
        if not controls:
            rows.append({"video": str(video), "skipped": f"{sidecar}: no control recorded, nothing to compare"})
            continue
        control = _control_path(str(controls[0]), sidecar)
        if control is None:
            rows.append({"video": str(video), "skipped": f"{sidecar}: control {controls[0]!r} not found (tried it "
                                                         f"as written and relative to {sidecar.parent})"})
            continue
        modalities = meta.get("modality")
        modality = (modalities[0] if modalities else None) if isinstance(modalities, list) else modalities
        if not isinstance(modality, str):
            modality = None  # a LoRA without avctl metadata records null
        masked = getattr(_registered(modality), "masked", False)
        mask = _dataset_mask(control) if masked else None
        mask_missing = None
        if masked and mask is None:
            mask_missing = (f"no mask found for {control} (expected <dataset>/mask/<clip>.mp4 next to "
                            "<dataset>/reference/<clip>.mp4); evaluate this video on its own with its mask")
        recorded = meta.get("from_video")
        source = _control_path(recorded, sidecar) if isinstance(recorded, str) else None
        source_missing = (f"the source clip {recorded!r} that {sidecar.name} records is not found"
                          if isinstance(recorded, str) and source is None else None)
        try:
            camera = meta.get("camera_file") or meta.get("camera")
            row = _evaluate(modality, control, video, mask, mask_missing,
                            EvalModels(clip_model, weights, brisque_model, camera, float(meta.get("fov") or 50.0)),
                            source=source, source_missing=source_missing)
        except AvctlError as exc:
            rows.append({"video": str(video), "skipped": str(exc)})
            continue
        except Exception as exc:  # a metric failing on one odd video must not hide the other runs' results
            rows.append({"video": str(video), "skipped": f"{type(exc).__name__}: {exc}"})
            continue
        row.update(sidecar=str(sidecar), strength=meta.get("strength"), seed=meta.get("seed"), loras=meta.get("loras"))
        rows.append(row)
    scored = [row for row in rows if "_fidelity" in row]
    add_skill(scored, [row.pop("_fidelity") for row in scored])  # chance from the other clips' controls
    return rows
