"""Faces for who-is-talking: detection (OpenCV's frontal-face Haar cascade, shipped with opencv-python 4.x; no
offline RetinaFace exists, its packages pin TensorFlow 2.5 or download weights), tracking by box overlap, and
mouth-region motion. Boxes are float [x0, y0, x1, y1] in pixels, NaN where a face is not on screen."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from avctl.errors import MissingWeights


class FaceDetector(Protocol):
    backend: str

    def detect(self, frame: np.ndarray) -> list[tuple[float, float, float, float]]:
        """Boxes (x0, y0, x1, y1) in pixels of one RGB frame."""
        ...


class HaarFaces:
    """OpenCV's `haarcascade_frontalface_default.xml` (ships in opencv-python 4.x's cv2.data)."""

    backend = "opencv-haar"

    def __init__(self, cascade: str = "haarcascade_frontalface_default.xml", min_size_fraction: float = 0.06) -> None:
        folder = getattr(getattr(cv2, "data", None), "haarcascades", None)
        path = Path(folder or "") / cascade
        if not folder or not path.is_file() or not hasattr(cv2, "CascadeClassifier"):
            raise MissingWeights(f"OpenCV {cv2.__version__} ships no Haar cascade {cascade}; install "
                                 "opencv-python>=4.10,<5 (5.x wheels have none)")
        self.classifier = cv2.CascadeClassifier(str(path))
        if self.classifier.empty():
            raise MissingWeights(f"{path}: the Haar cascade did not load")
        self.min_size_fraction = min_size_fraction
        self.version = f"1 (OpenCV {cv2.__version__} {cascade}, scale 1.1, 5 neighbours)"

    def detect(self, frame: np.ndarray) -> list[tuple[float, float, float, float]]:
        grey = cv2.equalizeHist(cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY))
        side = max(16, round(min(grey.shape) * self.min_size_fraction))
        found = self.classifier.detectMultiScale(grey, scaleFactor=1.1, minNeighbors=5, minSize=(side, side))
        return [(float(x), float(y), float(x + w), float(y + h)) for x, y, w, h in np.asarray(found).reshape(-1, 4)]


def iou(a: np.ndarray, b: np.ndarray) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def track_faces(detections: Sequence[Sequence[Sequence[float]]], min_iou: float = 0.3, max_gap: int = 6,
                min_fraction: float = 0.25) -> np.ndarray:
    """Link per-frame detections into tracks: each detection joins the live track whose last box overlaps it most
    (IoU ≥ `min_iou`, greedy, best pairs first), else starts a track; a track missing for more than `max_gap`
    frames ends. Gaps are filled by linear interpolation; tracks present in fewer than `min_fraction` of the frames
    are dropped (spurious detections). Returns [N, F, 4] boxes (NaN where absent), ordered left to right by mean
    centre x."""
    frames = len(detections)
    tracks: list[dict[int, np.ndarray]] = []
    last_seen: list[int] = []
    for t, found in enumerate(detections):
        boxes = [np.asarray(b, dtype=np.float64) for b in found]
        live = [k for k in range(len(tracks)) if t - last_seen[k] <= max_gap + 1]
        pairs = sorted(((iou(tracks[k][last_seen[k]], box), k, j) for k in live for j, box in enumerate(boxes)),
                       reverse=True)
        used_tracks: set[int] = set()
        used_boxes: set[int] = set()
        for overlap, k, j in pairs:
            if overlap < min_iou:
                break
            if k in used_tracks or j in used_boxes:
                continue
            tracks[k][t] = boxes[j]
            last_seen[k] = t
            used_tracks.add(k)
            used_boxes.add(j)
        for j, box in enumerate(boxes):
            if j not in used_boxes:
                tracks.append({t: box})
                last_seen.append(t)
    kept = [tr for tr in tracks if len(tr) >= max(1, math.ceil(min_fraction * frames))]
    out = np.full((len(kept), frames, 4), np.nan)
    for n, tr in enumerate(kept):
        times = np.array(sorted(tr))
        values = np.stack([tr[t] for t in times])  # [k, 4]
        span = np.arange(times[0], times[-1] + 1)
        for c in range(4):
            out[n, span, c] = np.interp(span, times, values[:, c])
    order = np.argsort([np.nanmean((tr[:, 0] + tr[:, 2]) / 2) for tr in out]) if len(out) else []
    return out[order] if len(out) else out


def detect_and_track(frames: np.ndarray, detector: FaceDetector, every: int = 1) -> np.ndarray:
    """Run `detector` on every `every`-th frame and link the detections (`track_faces`); [N, F, 4]."""
    detections: list[list[tuple[float, float, float, float]]] = []
    for i, frame in enumerate(frames):
        detections.append(detector.detect(frame) if i % every == 0 else [])
    return track_faces(detections, max_gap=max(6, 2 * every))


def mouth_boxes(boxes: np.ndarray) -> np.ndarray:
    """The mouth region of face boxes [..., 4]: the middle half in x, 62-95 % of the height in y."""
    x0, y0, x1, y1 = (boxes[..., i] for i in range(4))
    w, h = x1 - x0, y1 - y0
    return np.stack([x0 + 0.25 * w, y0 + 0.62 * h, x1 - 0.25 * w, y0 + 0.95 * h], axis=-1)


def mouth_motion(frames: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """[N, F] mean absolute grey-level change inside each face's mouth region between frame t−1 and t (the region
    taken at frame t); 0 at t = 0 and where the face is absent."""
    grey = np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames]).astype(np.float32)
    height, width = grey.shape[1:]
    regions = mouth_boxes(boxes)
    out = np.zeros(boxes.shape[:2])
    for n in range(boxes.shape[0]):
        for t in range(1, len(frames)):
            r = regions[n, t]
            if np.isnan(r).any():
                continue
            x0, y0 = max(0, math.floor(r[0])), max(0, math.floor(r[1]))
            x1, y1 = min(width, math.ceil(r[2])), min(height, math.ceil(r[3]))
            if x1 > x0 and y1 > y0:
                out[n, t] = float(np.mean(np.abs(grey[t, y0:y1, x0:x1] - grey[t - 1, y0:y1, x0:x1])))
    return out
