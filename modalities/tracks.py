"""Sparse tracks (paper §7): point tracks drawn as coloured dots on black, reference at half resolution.

The shipped backend, "opencv-lk", is an offline, weightless point tracker (`avctl.tracking`):

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

from pathlib import Path

import cv2
import numpy as np

from avctl.errors import BadInput, BadUsage
from avctl.media import atomic_path
from avctl.modalities.base import Clip, Control, EvalInput, FidelityResult, Modality
from avctl.tracking import (  # the tracker lives in the library (the camera estimate uses it too); re-exported
    _LK_CRITERIA,
    APPEARANCE_MAX_ERROR,  # noqa: F401
    FB_MAX_ERROR,
    LK_LEVELS,
    LK_WINDOW,
    MAX_TRACKS,
    Tracks,
    lk_step,  # noqa: F401
    track_coordinates,
    track_points,
)

TRAIL_FRAMES = 50  # LTXVDrawTracks' trail length
MIN_RADIUS, MAX_RADIUS, RADIUS_SHORT_SIDE = 2.0, 8.0, 1080  # LTXVDrawTracks' radii, at a 1080-px short side
_SHIFT = 4  # cv2.circle fixed-point bits: 1/16 px centres and radii


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


def track_epe(source_frames: np.ndarray, output_frames: np.ndarray) -> float:
    """Track end-point error in output pixels (lower = the output follows the source's motion more closely).

    1. Track the SOURCE (the clip the tracks control was extracted from) with the tracks extractor's own tracker
       (`track_coordinates`: Shi-Tomasi + LK with its forward-backward and appearance checks).
    2. Take the points alive on source frame 0, scale them to the output's size, and follow them through the OUTPUT
       with pyramidal LK, forward only, frame t → t+1 (same window and pyramid as the tracker); a point whose LK step
       fails keeps its last position (losing a point is not rewarded).
    3. For each frame t ≥ 1 with at least one of those points alive in the source track, the mean Euclidean distance
       between its output position and its source position scaled to the output size; the metric is the mean of
       these per-frame means. Frame 0 is left out (zero by construction).
    The first min(F) frames are compared; sizes may differ (aspect is stretched, like the other metrics).
    Raises BadInput when there are fewer than 2 frames or no point is tracked past frame 0 in the source."""
    source, output = np.asarray(source_frames), np.asarray(output_frames)
    for name, frames in (("source", source), ("output", output)):
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or len(frames) < 2:
            raise BadInput(f"track_epe {name}: needs uint8 [F, H, W, 3] RGB frames with F ≥ 2, got {frames.dtype} "
                           f"{tuple(frames.shape)}")
    count = min(len(source), len(output))
    source, output = source[:count], output[:count]
    points, alive = track_coordinates(source)  # [F, N, 2], [F, N]
    start = alive[0]
    points, alive = points[:, start], alive[:, start]  # only the tracks that start on frame 0
    if not alive[1:].any():
        raise BadInput("track_epe: no point of the source is tracked past frame 0 (too little texture or motion "
                       "too large); nothing to compare")
    scale = np.array([output.shape[2] / source.shape[2], output.shape[1] / source.shape[1]], dtype=np.float32)
    expected = points * scale  # [F, n, 2] in output pixels
    params = {"winSize": (LK_WINDOW, LK_WINDOW), "maxLevel": LK_LEVELS, "criteria": _LK_CRITERIA}
    current = expected[0].copy()  # [n, 2]
    previous = cv2.cvtColor(output[0], cv2.COLOR_RGB2GRAY)
    errors: list[float] = []
    for t in range(1, count):
        following = cv2.cvtColor(output[t], cv2.COLOR_RGB2GRAY)
        moved, status, _ = cv2.calcOpticalFlowPyrLK(previous, following, current.reshape(-1, 1, 2), None, **params)
        ok = status.reshape(-1) == 1
        current = np.where(ok[:, None], moved.reshape(-1, 2), current).astype(np.float32)
        previous = following
        if alive[t].any():
            errors.append(float(np.linalg.norm(current[alive[t]] - expected[t, alive[t]], axis=1).mean()))
    return float(np.mean(errors))


def track_fidelity(inp: EvalInput) -> FidelityResult:
    """`avctl eval` for tracks: track_epe of the output against the source clip the control was extracted from
    (not available without it), with chance and skill against the mirrored source."""
    from avctl.media import read_video
    from avctl.skill import Fidelity

    result = FidelityResult()
    if inp.source is None:
        result.missing["track_epe"] = inp.source_missing or (
            "no source clip given: track_epe compares the output's motion with the tracks of the clip the control "
            "was extracted from; pass source=<that clip>")
        return result
    source = read_video(inp.source).frames
    result.compared["source_frames"] = len(source)
    try:
        value = result.metrics["track_epe"] = track_epe(source, inp.output.frames)
    except BadInput as exc:
        result.missing["track_epe"] = str(exc)
        return result
    result.chance["track_epe"] = Fidelity(track_epe, source, inp.output.frames, value, str(inp.source),
                                          higher_is_better=False)
    return result


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
    fidelity=track_fidelity,
    fidelity_note="track_epe: the source clip's tracks followed through the output with LK, mean end-point error "
    "in output pixels (needs the source clip)",
)
