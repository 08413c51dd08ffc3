"""Sparse tracks (paper §7): point tracks drawn as coloured dots on black, reference at half resolution.

The shipped backend, "opencv-lk", is an offline, weightless point tracker:

* Shi-Tomasi corners (`cv2.goodFeaturesToTrack`) on frame 0, at most `MAX_TRACKS`, at least `min_distance` apart;
* each step t → t+1 runs pyramidal Lucas-Kanade (`cv2.calcOpticalFlowPyrLK`) forward, then backward from where the
  points landed; a point whose round trip misses its start by more than `FB_MAX_ERROR` (1 px), whose LK status fails
  either way, whose window differs from its seed window by more than `APPEARANCE_MAX_ERROR` grey levels, or that
  comes within half an LK window of the frame's edge is dropped (occluded, vanished, ambiguous or leaving) and its
  track ends;
* when fewer than half the tracks are alive, new corners are seeded sparsely (away from the living points, on every
  `RESEED_EVERY`-th frame only) on the current frame; a seeded track is invisible before the frame it starts on.

Tracking runs on the bucket-size frames. The rendering follows ComfyUI-LTXVideo's `LTXVDrawTracks` (the node the
released motion-track IC-LoRA is used with; shared/reference/extractors.md §4): every visible point of the last
`TRAIL_FRAMES` frames is a filled circle whose radius (2–8 px at a 1080-px short side, scaled to ours) and colour
(blue → green → yellow → red, oldest to newest) follow its age, oldest drawn first so the newest wins; the image is
then flipped to BGR order as that node does "to match IC-LoRA training data format". We draw at bucket size
(anti-aliased, sub-pixel) and shrink to the reference size (bucket ÷ 2) with `cv2.INTER_AREA`.

AllTracker (the paper's tracker) is not shipped: `--backend alltracker` is refused with what to install.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from avctl.errors import BadUsage
from avctl.media import atomic_path
from avctl.modalities.base import Clip, Control, Modality

MAX_TRACKS = 64
QUALITY_LEVEL = 0.01  # Shi-Tomasi: corners weaker than 1 % of the strongest are ignored
FB_MAX_ERROR = 1.0  # px: forward-backward round-trip error above which a point is dropped
# Mean absolute grey-level difference (0-255) between a point's window now and when it was seeded above which it is
# dropped: an occluder with texture of its own can give a consistent but wrong round trip, never a close match.
APPEARANCE_MAX_ERROR = 16.0
LK_WINDOW = 21
LK_LEVELS = 3
RESEED_BELOW = 0.5  # re-seed when fewer than this fraction of MAX_TRACKS are alive ...
RESEED_EVERY = 4  # ... at most once every this many frames (sparse: no burst of one-frame tracks)
TRAIL_FRAMES = 50  # LTXVDrawTracks' trail length
MIN_RADIUS, MAX_RADIUS, RADIUS_SHORT_SIDE = 2.0, 8.0, 1080  # LTXVDrawTracks' radii, at a 1080-px short side
_MARGIN = LK_WINDOW // 2
_BLOCK_SIZE = 7  # Shi-Tomasi neighbourhood
_SHIFT = 4  # cv2.circle fixed-point bits: 1/16 px centres and radii
_LK_CRITERIA = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 30, 0.01)


@dataclass
class Tracks:
    """Point tracks of one clip: `points` [N, F, 2] float32 (x, y) in pixels, `visible` [N, F] bool. A track is
    visible on one contiguous run of frames: from the frame it was seeded on until it was dropped."""

    points: np.ndarray
    visible: np.ndarray


def _min_distance(height: int, width: int) -> int:
    return max(6, min(height, width) // 16)


def _seed(grey: np.ndarray, count: int, avoid: np.ndarray) -> np.ndarray:
    """Up to `count` Shi-Tomasi corners [n, 2] float32, kept `min_distance` away from the points in `avoid`. The
    quality floor is relative to the strongest corner of the whole frame, so the corners the living tracks already
    hold do not lower it to noise."""
    height, width = grey.shape
    distance = _min_distance(height, width)
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[_MARGIN : height - _MARGIN, _MARGIN : width - _MARGIN] = 255  # LK needs its whole window inside the frame
    for x, y in avoid:
        cv2.circle(mask, (round(float(x)), round(float(y))), distance, 0, -1)
    strength = cv2.cornerMinEigenVal(grey, _BLOCK_SIZE)  # [H, W]: what goodFeaturesToTrack ranks by
    floor = QUALITY_LEVEL * float(strength[_MARGIN : height - _MARGIN, _MARGIN : width - _MARGIN].max(initial=0.0))
    corners = cv2.goodFeaturesToTrack(grey, maxCorners=count, qualityLevel=QUALITY_LEVEL, minDistance=distance,
                                      mask=mask, blockSize=_BLOCK_SIZE)
    if corners is None or floor <= 0:
        return np.zeros((0, 2), dtype=np.float32)
    corners = corners.reshape(-1, 2)
    strong = strength[corners[:, 1].astype(int), corners[:, 0].astype(int)] >= floor
    return corners[strong].astype(np.float32)


def lk_step(previous: np.ndarray, following: np.ndarray, points: np.ndarray,
            max_error: float = FB_MAX_ERROR) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Track [n, 2] points from grey frame `previous` to `following`. Returns (new points [n, 2], kept [n] bool,
    forward-backward round-trip error [n] in px, inf where LK failed either way). Kept: LK succeeded both ways,
    the round trip erred at most `max_error` px and the point stays half an LK window inside the frame."""
    if len(points) == 0:
        return points.copy(), np.zeros(0, dtype=bool), np.zeros(0, dtype=np.float32)
    height, width = previous.shape
    params = {"winSize": (LK_WINDOW, LK_WINDOW), "maxLevel": LK_LEVELS, "criteria": _LK_CRITERIA}
    start = points.reshape(-1, 1, 2).astype(np.float32)
    forward, status_f, _ = cv2.calcOpticalFlowPyrLK(previous, following, start, None, **params)
    back, status_b, _ = cv2.calcOpticalFlowPyrLK(following, previous, forward, None, **params)
    forward, back = forward.reshape(-1, 2), back.reshape(-1, 2)
    error = np.linalg.norm(back - points, axis=1).astype(np.float32)
    ok = (status_f.reshape(-1) == 1) & (status_b.reshape(-1) == 1)
    error[~ok] = np.inf
    inside = ((forward[:, 0] >= _MARGIN) & (forward[:, 0] <= width - 1 - _MARGIN)
              & (forward[:, 1] >= _MARGIN) & (forward[:, 1] <= height - 1 - _MARGIN))
    return forward, ok & inside & (error <= max_error), error


def _patch(grey: np.ndarray, point: np.ndarray) -> np.ndarray:
    """The LK window around `point` (sub-pixel), float32 [LK_WINDOW, LK_WINDOW]."""
    return cv2.getRectSubPix(grey, (LK_WINDOW, LK_WINDOW), (float(point[0]), float(point[1]))).astype(np.float32)


def track_points(frames: np.ndarray, max_tracks: int = MAX_TRACKS,
                 max_appearance_error: float = APPEARANCE_MAX_ERROR) -> Tracks:
    """Track Shi-Tomasi corners through [F, H, W, 3] uint8 RGB frames (see the module docstring). A point is also
    dropped when its window differs from the one it was seeded with by more than `max_appearance_error` grey levels
    on average: that catches the tracks LK lets slide onto an occluder's edge, one consistent small step at a time."""
    greys = [cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY) for frame in frames]
    count = len(greys)
    all_points: list[np.ndarray] = []  # per track: [F, 2]
    all_visible: list[np.ndarray] = []  # per track: [F]
    templates: list[np.ndarray] = []  # per track: its seed window

    def start_tracks(seeds: np.ndarray, frame: int) -> list[int]:
        ids = []
        for seed in seeds:
            points = np.zeros((count, 2), dtype=np.float32)
            visible = np.zeros(count, dtype=bool)
            points[frame], visible[frame] = seed, True
            all_points.append(points)
            all_visible.append(visible)
            templates.append(_patch(greys[frame], seed))
            ids.append(len(all_points) - 1)
        return ids

    alive = start_tracks(_seed(greys[0], max_tracks, np.zeros((0, 2))), 0)
    for t in range(count - 1):
        current = np.array([all_points[i][t] for i in alive], dtype=np.float32).reshape(-1, 2)
        moved, kept, _ = lk_step(greys[t], greys[t + 1], current)
        survivors = []
        for i, new, keep in zip(alive, moved, kept, strict=True):
            if keep and float(np.abs(_patch(greys[t + 1], new) - templates[i]).mean()) <= max_appearance_error:
                all_points[i][t + 1], all_visible[i][t + 1] = new, True
                survivors.append(i)
        alive = survivors
        if len(alive) < RESEED_BELOW * max_tracks and (t + 1) % RESEED_EVERY == 0:
            living = np.array([all_points[i][t + 1] for i in alive], dtype=np.float32).reshape(-1, 2)
            alive += start_tracks(_seed(greys[t + 1], max_tracks - len(alive), living), t + 1)
    if not all_points:
        return Tracks(points=np.zeros((0, count, 2), np.float32), visible=np.zeros((0, count), bool))
    return Tracks(points=np.stack(all_points), visible=np.stack(all_visible))


def track_coordinates(frames: np.ndarray, max_tracks: int = MAX_TRACKS) -> tuple[np.ndarray, np.ndarray]:
    """The coordinates the tracks control is drawn from, frame-major: (points [F, N, 2] float32 (x, y) in pixels of
    `frames` (bucket pixels for the extractor), alive [F, N] bool). Same tracker as the extractor (`track_points`);
    a point's coordinates where it is not alive are 0 and meaningless."""
    tracks = track_points(frames, max_tracks)
    return np.ascontiguousarray(tracks.points.transpose(1, 0, 2)), np.ascontiguousarray(tracks.visible.T)


def write_track_coordinates(path: str | Path, frames: np.ndarray, max_tracks: int = MAX_TRACKS) -> Path:
    """Track `frames` (see `track_coordinates`) and write `points` [F, N, 2] and `alive` [F, N] to an .npz at `path`
    atomically (temp file, then replace). Returns the path."""
    path = Path(path)
    if path.suffix != ".npz":
        raise BadUsage(f"{path}: track coordinates are written as .npz; give a path ending in .npz")
    points, alive = track_coordinates(frames, max_tracks)
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, points=points, alive=alive)
    return path


def age_colour(ratio: float) -> tuple[float, float, float]:
    """LTXVDrawTracks' age colour, RGB in 0..1: ratio 0 (oldest) blue → green → yellow → 1 (newest) red."""
    if ratio <= 1 / 3:
        return 0.0, ratio * 3, 1.0 - ratio * 3
    if ratio <= 2 / 3:
        return (ratio - 1 / 3) * 3, 1.0, 0.0
    return 1.0, 1.0 - (ratio - 2 / 3) * 3, 0.0


def render_tracks(tracks: Tracks, size: tuple[int, int], reference_size: tuple[int, int]) -> np.ndarray:
    """Draw tracks on black at `size` (height, width) and shrink to `reference_size` with INTER_AREA. Returns
    [F, h, w, 3] uint8, channels in LTXVDrawTracks' BGR order."""
    height, width = size
    ref_h, ref_w = reference_size
    count = tracks.visible.shape[1]
    scale = min(height, width) / RADIUS_SHORT_SIDE
    out = np.empty((count, ref_h, ref_w, 3), dtype=np.uint8)  # [F, h, w, 3]
    for t in range(count):
        canvas = np.zeros((height, width, 3), dtype=np.uint8)  # [H, W, 3]
        first = max(0, t - TRAIL_FRAMES)
        for past in range(first, t + 1):  # oldest first: the newest dots are drawn last and win
            ratio = 1.0 - (t - past) / TRAIL_FRAMES
            radius = max(0.5, (MIN_RADIUS + (MAX_RADIUS - MIN_RADIUS) * ratio) * scale)
            red, green, blue = age_colour(ratio)
            colour = (round(blue * 255), round(green * 255), round(red * 255))  # flipped to BGR, as the node does
            for x, y in tracks.points[tracks.visible[:, past], past]:
                centre = (round(float(x) * (1 << _SHIFT)), round(float(y) * (1 << _SHIFT)))
                cv2.circle(canvas, centre, round(radius * (1 << _SHIFT)), colour, -1, cv2.LINE_AA, _SHIFT)
        out[t] = canvas if (ref_h, ref_w) == (height, width) else cv2.resize(canvas, (ref_w, ref_h),
                                                                             interpolation=cv2.INTER_AREA)
    return out


BACKENDS = ("opencv-lk", "alltracker")


class LKTracksExtractor:
    """Weightless and deterministic: Shi-Tomasi + pyramidal LK with a forward-backward check, drawn as
    LTXVDrawTracks draws. `weights` is accepted for the factory contract and must be None (no weights)."""

    backend = "opencv-lk"
    version = (f"1 (OpenCV {cv2.__version__}, {MAX_TRACKS} tracks, FB ≤ {FB_MAX_ERROR:g} px, "
               f"LTXVDrawTracks {TRAIL_FRAMES}-frame trails, BGR, INTER_AREA)")

    def __init__(self, weights: Path | None = None, backend: str | None = None) -> None:
        if backend == "alltracker":
            raise BadUsage("--backend alltracker: AllTracker is not shipped with avctl; install it "
                           "(github.com/aharley/alltracker, with its checkpoint) as a modality plugin, or use the "
                           "built-in --backend opencv-lk")
        if backend not in (None, self.backend):
            raise BadUsage(f"--backend {backend}: unknown tracks backend; use one of {', '.join(BACKENDS)}")
        if weights is not None:
            raise BadUsage(f"--weights {weights}: the opencv-lk tracker needs no weights; drop --weights")

    def __call__(self, clip: Clip) -> Control:
        tracks = track_points(clip.frames)
        return Control(frames=render_tracks(tracks, clip.frames.shape[1:3], clip.reference_size))


TRACKS = Modality(
    name="tracks",
    category="motion",
    description="Move content along sparse point tracks.",
    streams=("video",),
    targets=("V.SA", "V.CA", "V.FF"),
    rank=32,
    steps=5000,
    train_samples=5000,
    downscale=2,
    context="noised",
    extractor=LKTracksExtractor,
    extractor_note="OpenCV Shi-Tomasi + pyramidal LK with a 1-px forward-backward check, drawn as LTXVDrawTracks "
    "draws (age-coloured dots, 50-frame trails, BGR) at bucket size, INTER_AREA-shrunk (weightless); AllTracker "
    "(--backend alltracker) is not shipped",
)
