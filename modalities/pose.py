"""Pose (paper §7): DWPose skeletons of real videos as the reference, at half resolution.

The default extractor is DWPose run with onnxruntime from the two ONNX files the DWPose annotator uses (HF
`yzd-v/DWPose`):

* `yolox_l.onnx`: the YOLOX-L person detector. Input `images` [N, 3, 640, 640] float32, the frame letterboxed
  (top-left, padded with 114, not normalised); output [N, 8400, 85]: per anchor (strides 8/16/32) the raw box
  offsets (cx, cy, log w, log h), objectness and 80 class scores (already sigmoid-ed). Persons (class 0) with
  objectness × class score > 0.3 survive an NMS at IoU 0.45.
* `dw-ll_ucoco_384.onnx`: the RTMPose-L whole-body model (133 COCO-WholeBody keypoints). Input `input`
  [N, 3, 384, 288] float32, the box (padded × 1.25, fixed to the 288:384 aspect) affine-cropped and normalised with
  the ImageNet mean/std in 0..255; outputs `simcc_x` [N, 133, 576] and `simcc_y` [N, 133, 768] (SimCC, split ratio
  2): a keypoint is the argmax of each, its score the smaller of the two maxima.

Frames go in as RGB, as in the DWPose / controlnet_aux annotators. The 133 keypoints are re-ordered to DWPose's
OpenPose layout (`to_openpose`: 18 body points with a neck = mid-shoulders, 6 feet, 68 face, 2 × 21 hands) and drawn
by `draw_pose` exactly as the DWPose annotator draws them (OpenPose body palette, 17 limbs as ellipses dimmed to 60 %,
keypoint dots of radius 4, hand edges in HSV rainbow with blue dots, face landmarks as white dots; keypoints under
score 0.3 are skipped) on black at bucket size, then shrunk to the reference size (bucket ÷ 2) with `cv2.INTER_AREA`.

Weights are looked up in the `weights` directory (or its `dwpose/`), then `$AVCTL_HOME/weights/dwpose`, then the
local Hugging Face cache (never the network); missing files raise `MissingWeights` when the extractor is built. A
clip with no person in any frame is unusable (`BadInput`). onnxruntime without a GPU provider is warned about on
stderr, never silently.
"""

from __future__ import annotations

import colorsys
import math
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from avctl.errors import AvctlError, BadInput, BadUsage, MissingWeights
from avctl.modalities.base import Clip, Control, EvalInput, FidelityResult, Modality, weight_places

BACKEND = "dwpose"
HF_REPO = "yzd-v/DWPose"
DET_FILE = "yolox_l.onnx"
POSE_FILE = "dw-ll_ucoco_384.onnx"

DET_SCORE = 0.3  # person score (objectness × class) kept, as DWPose
DET_NMS_IOU = 0.45
BOX_PADDING = 1.25
SIMCC_SPLIT = 2.0
KEYPOINT_SCORE = 0.3  # keypoints below this are not drawn, as DWPose
IMAGENET_MEAN = np.array([123.675, 116.28, 103.53], dtype=np.float32)
IMAGENET_STD = np.array([58.395, 57.12, 57.375], dtype=np.float32)
MAX_BATCH = 16  # crops/frames per onnxruntime call when the model's batch axis is dynamic

# OpenPose-18 body: limbs as 1-based keypoint pairs (DWPose/ControlNet `util.draw_bodypose`; only the first 17 are
# drawn) and the 18-colour RGB palette shared by limbs and keypoints.
LIMB_SEQ = ((2, 3), (2, 6), (3, 4), (4, 5), (6, 7), (7, 8), (2, 9), (9, 10), (10, 11), (2, 12), (12, 13), (13, 14),
            (2, 1), (1, 15), (15, 17), (1, 16), (16, 18), (3, 17), (6, 18))
BODY_COLORS = ((255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0), (0, 255, 0),
               (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255), (0, 0, 255), (85, 0, 255),
               (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85))
DRAWN_LIMBS = 17
LIMB_WIDTH = 4
BODY_DIM = 0.6  # limbs are dimmed to 60 % before the keypoint dots go on top
DOT_RADIUS = 4
HAND_EDGES = ((0, 1), (1, 2), (2, 3), (3, 4), (0, 5), (5, 6), (6, 7), (7, 8), (0, 9), (9, 10), (10, 11), (11, 12),
              (0, 13), (13, 14), (14, 15), (15, 16), (0, 17), (17, 18), (18, 19), (19, 20))
HAND_COLORS = tuple(tuple(round(c * 255) for c in colorsys.hsv_to_rgb(i / len(HAND_EDGES), 1.0, 1.0))
                    for i in range(len(HAND_EDGES)))
HAND_DOT = (0, 0, 255)
FACE_DOT = (255, 255, 255)
FACE_RADIUS = 3
# DWPose's OpenPose layout of its 134 points: body 0-17, feet 18-23 (not drawn), face 24-91, hands 92-112 / 113-133.
BODY, FACE, HANDS = slice(0, 18), slice(24, 92), (slice(92, 113), slice(113, 134))
# COCO-WholeBody body order → OpenPose-18 order (after inserting the neck at 17), as DWPose's `Wholebody`.
_MMPOSE_IDX = [17, 6, 8, 10, 7, 9, 12, 14, 16, 13, 15, 2, 1, 4, 3]
_OPENPOSE_IDX = [1, 2, 3, 4, 6, 7, 8, 9, 10, 12, 13, 14, 15, 16, 17]

_warned_cpu = False


# ------------------------------------------------------------------------------------------------------ rendering
def draw_pose(keypoints: np.ndarray, scores: np.ndarray, height: int, width: int,
              threshold: float = KEYPOINT_SCORE) -> np.ndarray:
    """DWPose-style skeletons on black: [H, W, 3] uint8 RGB.

    `keypoints` [P, K, 2] (x, y) in pixels of the H × W canvas and `scores` [P, K], in DWPose's OpenPose layout:
    K = 18 (body only) or 134 (body, feet, face, hands; feet are not drawn, as in DWPose). Points scoring below
    `threshold` are left out, with their limbs."""
    keypoints = np.asarray(keypoints, dtype=np.float64).reshape(-1, np.shape(keypoints)[-2], 2)
    scores = np.asarray(scores, dtype=np.float64).reshape(len(keypoints), -1)
    if keypoints.shape[1] not in (18, 134) or scores.shape != keypoints.shape[:2]:
        raise ValueError(f"draw_pose wants keypoints [P, 18|134, 2] and scores [P, 18|134], got "
                         f"{keypoints.shape} and {scores.shape}")
    canvas = np.zeros((height, width, 3), dtype=np.uint8)
    visible = scores >= threshold  # [P, K]
    for limb in range(DRAWN_LIMBS):
        a, b = LIMB_SEQ[limb][0] - 1, LIMB_SEQ[limb][1] - 1
        for person in range(len(keypoints)):
            if not (visible[person, a] and visible[person, b]):
                continue
            (x0, y0), (x1, y1) = keypoints[person, a], keypoints[person, b]
            length = math.hypot(x0 - x1, y0 - y1)
            angle = math.degrees(math.atan2(y0 - y1, x0 - x1))
            polygon = cv2.ellipse2Poly((int((x0 + x1) / 2), int((y0 + y1) / 2)), (int(length / 2), LIMB_WIDTH),
                                       int(angle), 0, 360, 1)
            cv2.fillConvexPoly(canvas, polygon, BODY_COLORS[limb])
    canvas = (canvas * BODY_DIM).astype(np.uint8)
    for point in range(18):
        for person in range(len(keypoints)):
            if visible[person, point]:
                x, y = keypoints[person, point]
                cv2.circle(canvas, (int(x), int(y)), DOT_RADIUS, BODY_COLORS[point], thickness=-1)
    if keypoints.shape[1] == 134:
        for person in range(len(keypoints)):
            for hand in HANDS:
                points, seen = keypoints[person, hand], visible[person, hand]
                for edge, (a, b) in enumerate(HAND_EDGES):
                    if seen[a] and seen[b]:
                        cv2.line(canvas, (int(points[a, 0]), int(points[a, 1])),
                                 (int(points[b, 0]), int(points[b, 1])), HAND_COLORS[edge], thickness=2)
                for (x, y), ok in zip(points, seen, strict=True):
                    if ok:
                        cv2.circle(canvas, (int(x), int(y)), DOT_RADIUS, HAND_DOT, thickness=-1)
            for (x, y), ok in zip(keypoints[person, FACE], visible[person, FACE], strict=True):
                if ok:
                    cv2.circle(canvas, (int(x), int(y)), FACE_RADIUS, FACE_DOT, thickness=-1)
    return canvas


def to_openpose(keypoints: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """COCO-WholeBody [P, 133, 2] / [P, 133] → DWPose's OpenPose layout [P, 134, 2] / [P, 134]: a neck (the
    shoulders' midpoint, score 1 when both shoulders score > 0.3, else 0) is inserted and the body re-ordered."""
    neck = keypoints[:, [5, 6]].mean(axis=1)  # [P, 2]
    neck_score = ((scores[:, 5] > KEYPOINT_SCORE) & (scores[:, 6] > KEYPOINT_SCORE)).astype(scores.dtype)
    points = np.insert(keypoints, 17, neck, axis=1)  # [P, 134, 2]
    conf = np.insert(scores, 17, neck_score, axis=1)  # [P, 134]
    points[:, _OPENPOSE_IDX] = points[:, _MMPOSE_IDX]
    conf[:, _OPENPOSE_IDX] = conf[:, _MMPOSE_IDX]
    return points, conf


# ------------------------------------------------------------------------------------------------------ detection
def _letterbox(frame: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, float]:
    """[H, W, 3] uint8 → [3, h, w] float32 letterboxed at the top-left on 114 grey, and the resize ratio."""
    ratio = min(size[0] / frame.shape[0], size[1] / frame.shape[1])
    new_h, new_w = int(frame.shape[0] * ratio), int(frame.shape[1] * ratio)
    padded = np.full((size[0], size[1], 3), 114, dtype=np.uint8)
    padded[:new_h, :new_w] = cv2.resize(frame, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray(padded.transpose(2, 0, 1), dtype=np.float32), ratio


def _decode_yolox(raw: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """[A, 85] raw YOLOX output → [A, 5] (x0, y0, x1, y1, person score) in letterboxed input pixels."""
    grids, strides = [], []
    for stride in (8, 16, 32):
        ys, xs = np.mgrid[0 : size[0] // stride, 0 : size[1] // stride]
        grids.append(np.stack([xs.ravel(), ys.ravel()], -1))
        strides.append(np.full((xs.size, 1), stride))
    grid, stride = np.concatenate(grids).astype(np.float32), np.concatenate(strides).astype(np.float32)
    if len(grid) != len(raw):
        raise AvctlError(f"the YOLOX detector returned {len(raw)} anchors, expected {len(grid)} for input {size}")
    centre = (raw[:, :2] + grid) * stride
    half = np.exp(raw[:, 2:4]) * stride / 2
    return np.concatenate([centre - half, centre + half, raw[:, 4:5] * raw[:, 5:6]], axis=1)


def _nms(boxes: np.ndarray, iou: float) -> np.ndarray:
    """Greedy NMS over [N, 5] (x0, y0, x1, y1, score) → the kept rows, best first."""
    order = np.argsort(-boxes[:, 4])
    keep = []
    while len(order):
        best, rest = order[0], order[1:]
        keep.append(best)
        x0 = np.maximum(boxes[best, 0], boxes[rest, 0])
        y0 = np.maximum(boxes[best, 1], boxes[rest, 1])
        x1 = np.minimum(boxes[best, 2], boxes[rest, 2])
        y1 = np.minimum(boxes[best, 3], boxes[rest, 3])
        inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        order = rest[inter / np.maximum(area[best] + area[rest] - inter, 1e-9) <= iou]
    return boxes[keep]


def _crop_transform(box: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """A person box (x0, y0, x1, y1) → (centre [2], scale [2]) of the RTMPose crop of `size` (h, w): the box padded
    × 1.25 and widened or heightened to the input's aspect ratio, as mmpose's `bbox_xyxy2cs` + `_fix_aspect_ratio`."""
    centre = np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2], dtype=np.float64)
    w, h = (box[2] - box[0]) * BOX_PADDING, (box[3] - box[1]) * BOX_PADDING
    aspect = size[1] / size[0]
    scale = np.array([w, w / aspect] if w > h * aspect else [h * aspect, h], dtype=np.float64)
    return centre, scale


# ------------------------------------------------------------------------------------------------------ extractor
def _batch_limit(session: Any) -> int:
    first = session.get_inputs()[0].shape[0]
    return first if isinstance(first, int) and first > 0 else MAX_BATCH


def _input_hw(session: Any, default: tuple[int, int]) -> tuple[int, int]:
    shape = session.get_inputs()[0].shape
    h, w = shape[2], shape[3]
    return (h, w) if isinstance(h, int) and isinstance(w, int) else default


class DWPoseExtractor:
    """DWPose (YOLOX-L + RTMPose-L whole-body, ONNX) loaded once; `__call__` renders one clip."""

    backend = BACKEND

    def __init__(self, detector: Any, pose: Any, *, source: str) -> None:
        self.detector = detector
        self.pose = pose
        self.source = source
        self.providers = list(detector.get_providers())
        self.det_size = _input_hw(detector, (640, 640))
        self.pose_size = _input_hw(pose, (384, 288))
        self.version = f"1 (DWPose {DET_FILE} + {POSE_FILE} from {source}, OpenPose drawing, INTER_AREA)"

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | None = None) -> DWPoseExtractor:
        """Load `yolox_l.onnx` and `dw-ll_ucoco_384.onnx` from `directory`. `device`: None picks CUDA when
        onnxruntime has it (else warns on stderr and uses the CPU), "cpu" or "cuda[:N]" force one."""
        directory = Path(directory)
        missing = [name for name in (DET_FILE, POSE_FILE) if not (directory / name).is_file()]
        if missing:
            raise MissingWeights(f"DWPose needs {' and '.join(missing)} in {directory}; {_download_hint(directory)}")
        return cls.from_files(directory / DET_FILE, directory / POSE_FILE, device=device)

    @classmethod
    def from_files(cls, detector: Path, pose: Path, device: str | None = None) -> DWPoseExtractor:
        import onnxruntime as ort

        available = ort.get_available_providers()
        device_id = 0
        if device is not None and device.startswith("cuda"):
            if "CUDAExecutionProvider" not in available:
                raise BadUsage(f"device {device!r} asked for, but onnxruntime has only {available}; "
                               "install onnxruntime-gpu")
            device_id = int(device.split(":")[1]) if ":" in device else 0
        use_cuda = device != "cpu" and "CUDAExecutionProvider" in available
        if device is None and not use_cuda:
            _warn_cpu(available)
        providers: list[Any] = (
            [("CUDAExecutionProvider", {"device_id": device_id}), "CPUExecutionProvider"] if use_cuda
            else ["CPUExecutionProvider"]
        )
        det = ort.InferenceSession(str(detector), providers=providers)
        pose_session = ort.InferenceSession(str(pose), providers=providers)
        if use_cuda and "CUDAExecutionProvider" not in det.get_providers():  # CUDA libraries failed to load
            _warn_cpu(list(det.get_providers()))
        return cls(det, pose_session, source=str(detector.parent))

    def detect_people(self, frames: np.ndarray) -> list[np.ndarray]:
        """[F, H, W, 3] uint8 RGB → per frame the person boxes [P, 5] (x0, y0, x1, y1, score) in frame pixels."""
        name = self.detector.get_inputs()[0].name
        limit = _batch_limit(self.detector)
        boxes: list[np.ndarray] = []
        for start in range(0, len(frames), limit):
            chunk = [_letterbox(frame, self.det_size) for frame in frames[start : start + limit]]
            raw = self.detector.run(None, {name: np.stack([c[0] for c in chunk])})[0]  # [B, A, 85]
            for out, (_, ratio) in zip(raw, chunk, strict=True):
                decoded = _decode_yolox(np.asarray(out, dtype=np.float32), self.det_size)
                decoded = decoded[decoded[:, 4] > DET_SCORE]
                kept = _nms(decoded, DET_NMS_IOU) if len(decoded) else decoded
                kept[:, :4] /= ratio
                boxes.append(kept)
        return boxes

    def estimate(self, frames: np.ndarray, boxes: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per frame the whole-body keypoints in DWPose's OpenPose layout: ([P, 134, 2] pixels, [P, 134] scores)."""
        crops, owners, transforms = [], [], []
        h, w = self.pose_size
        for index, (frame, frame_boxes) in enumerate(zip(frames, boxes, strict=True)):
            for box in frame_boxes:
                centre, scale = _crop_transform(box, self.pose_size)
                s = w / scale[0]
                warp = np.array([[s, 0, w / 2 - centre[0] * s], [0, s, h / 2 - centre[1] * s]], dtype=np.float64)
                crop = cv2.warpAffine(frame, warp, (w, h), flags=cv2.INTER_LINEAR).astype(np.float32)
                crops.append(((crop - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1))
                owners.append(index)
                transforms.append((centre, scale))
        points = np.zeros((len(crops), 133, 2))
        scores = np.zeros((len(crops), 133))
        name = self.pose.get_inputs()[0].name
        limit = _batch_limit(self.pose)
        for start in range(0, len(crops), limit):
            batch = np.ascontiguousarray(np.stack(crops[start : start + limit]), dtype=np.float32)
            simcc_x, simcc_y = self.pose.run(["simcc_x", "simcc_y"], {name: batch})  # [B, 133, 2w], [B, 133, 2h]
            split_x, split_y = simcc_x.shape[-1] / w, simcc_y.shape[-1] / h
            xs, ys = simcc_x.argmax(-1) / split_x, simcc_y.argmax(-1) / split_y  # [B, 133] in crop pixels
            conf = np.minimum(simcc_x.max(-1), simcc_y.max(-1))
            for j in range(len(batch)):
                centre, scale = transforms[start + j]
                points[start + j] = np.stack([xs[j] / w, ys[j] / h], -1) * scale + centre - scale / 2
                scores[start + j] = conf[j]
        result = []
        for index in range(len(frames)):
            mine = [i for i, owner in enumerate(owners) if owner == index]
            result.append(to_openpose(points[mine], scores[mine]) if mine
                          else (np.zeros((0, 134, 2)), np.zeros((0, 134))))
        return result

    def __call__(self, clip: Clip) -> Control:
        frames = np.ascontiguousarray(clip.frames)
        poses = self.estimate(frames, self.detect_people(frames))
        if not any(len(p) for p, _ in poses):
            raise BadInput(f"DWPose found no person in any of the {len(frames)} frames")
        height, width = clip.reference_size
        out = np.empty((len(frames), height, width, 3), dtype=np.uint8)  # [F, h, w, 3]
        for i, (points, scores) in enumerate(poses):
            canvas = draw_pose(points, scores, frames.shape[1], frames.shape[2])
            if canvas.shape[:2] != (height, width):
                canvas = cv2.resize(canvas, (width, height), interpolation=cv2.INTER_AREA)
            out[i] = canvas
        return Control(frames=out)


def _warn_cpu(available: list[str]) -> None:
    global _warned_cpu
    if not _warned_cpu:
        _warned_cpu = True
        sys.stderr.write(f"WARNING: onnxruntime has no CUDA provider (only {', '.join(available)}): DWPose runs on "
                         "the CPU, slowly; install onnxruntime-gpu to use the GPU\n")


def _download_hint(where: Path | str) -> str:
    return (f"download them with `huggingface-cli download {HF_REPO} {DET_FILE} {POSE_FILE} --local-dir {where}` "
            "(or without --local-dir, into the Hugging Face cache)")


def _cached_files() -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    try:
        found = [try_to_load_from_cache(HF_REPO, name) for name in (DET_FILE, POSE_FILE)]
    except ValueError:
        return None
    if all(isinstance(f, str) for f in found):
        directories = {Path(str(f)).parent for f in found}
        if len(directories) == 1:
            return directories.pop()
    return None


def pose_extractor(weights: Path | None = None, backend: str | None = None) -> DWPoseExtractor:
    """The `pose` modality's factory (called once per worker). Weights: `weights` (holding the two ONNX files, or
    a `dwpose/` that does), then `$AVCTL_HOME/weights/dwpose`, then the local Hugging Face cache; else
    `MissingWeights`."""
    backend = backend or BACKEND
    if backend != BACKEND:
        raise BadUsage(f"unknown pose backend {backend!r}; known: {BACKEND}")
    places = weight_places(weights, backend)
    for place in places:
        if (place / DET_FILE).is_file() and (place / POSE_FILE).is_file():
            return DWPoseExtractor.from_pretrained(place)
    cached = _cached_files()
    if cached is not None:
        return DWPoseExtractor.from_pretrained(cached)
    searched = ", ".join([*(str(p) for p in places), "the local Hugging Face cache"])
    raise MissingWeights(f"DWPose weights {DET_FILE} and {POSE_FILE} not found in {searched}; "
                         f"{_download_hint(places[0] if places else '$AVCTL_HOME/weights/' + BACKEND)}")


def pose_fidelity(inp: EvalInput) -> FidelityResult:
    """`avctl eval` for pose: skeletons re-detected on the output with this modality's own extractor and drawn the
    same way, against the control (`avctl.metrics.pose_agreement`); not available when the models are not found."""
    from avctl.metrics import cached_extractor, pose_agreement, read_control_video

    result = FidelityResult()
    try:
        extractor = cached_extractor(inp.modality, inp.weights)
    except MissingWeights as exc:
        result.missing["pose_skeleton_f1"] = ("re-detecting pose on the output needs the pose extractor's models "
                                              f"(DWPose): {exc}")
        return result
    control, count = read_control_video(inp.control, inp.output.frames, result.compared, inp.modality.name)
    result.compared["fidelity_model"] = getattr(extractor, "version", inp.modality.name)
    height, width = control.shape[1:3]
    clip = Clip(frames=np.ascontiguousarray(inp.output.frames[:count]), fps=inp.output.fps, key=inp.control.name,
                seed=0, reference_size=(height, width))
    try:
        drawn = extractor(clip).frames
    except BadInput:  # no person found on the output: nothing drawn, which the F1 then scores
        drawn = np.zeros((count, height, width, 3), dtype=np.uint8)
    result.metrics["pose_skeleton_f1"] = pose_agreement(control[:count], drawn)
    return result


POSE = Modality(
    name="pose",
    category="spatial",
    description="Follow the body pose (OpenPose-style skeletons) of a video.",
    streams=("video",),
    targets=("V.SA",),
    rank=128,
    steps=3000,
    train_samples=2000,
    downscale=2,
    context="noised",
    extractor=pose_extractor,
    extractor_note="DWPose (yolox_l.onnx + dw-ll_ucoco_384.onnx from HF yzd-v/DWPose via onnxruntime; weights dir or "
    "local cache, no fallback), DWPose/OpenPose drawing at bucket size, INTER_AREA to half size",
    fidelity=pose_fidelity,
    fidelity_note="pose_skeleton_f1: skeletons re-detected on the output vs the control (needs the extractor's "
    "weights)",
)
