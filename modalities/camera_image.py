"""Camera from an image (paper §7): the input image, unprojected with monocular depth into a point cloud and rendered
along the target camera trajectory (the "canonical grid", disocclusions #66FF00), is the reference on a 4×
downscaled canvas; the image also conditions the first frame.

Training data come from real videos. Per clip the extractor needs the cameras of the clip's frames and the depth of
its first frame; it renders frame 0 along those cameras (`avctl.camera.render_image`) at the reference size and the
real video is the target. Where they come from (`--backend`):

* `opencv` (default): cameras from `<clip>.camera.json` next to the video (avctl's trajectory JSON, one camera per
  frame from the clip's first frame; e.g. exported from SpatialTrackerV2 or COLMAP), else estimated with OpenCV
  (`estimate_trajectory`): dense LK tracks, then per frame a rotation + zoom (pans, tilts, zooms: the FOV follows the
  zoom from `DEFAULT_FOV`° at frame 0), or PnP + RANSAC on frame 0's tracks lifted with its depth where that fits
  clearly better (parallax: a translation). Depth from `<clip>.depth.npy` ([H, W] or
  [F, H, W] z-depth at the video's size) when present, else the depth modality's model (Depth-Anything-V2, from
  `--weights` or the local cache; MissingWeights when absent).
* `files`: both from the sidecars only, no model; a clip without them is skipped with the reason.
* `spatialtracker-v2`: not shipped (see `SPATIALTRACKER_NOTE`); export its cameras to `<clip>.camera.json` instead.

The sidecar FOV is the vertical FOV of the frames as the bucket crops them (landscape buckets crop landscape videos
at the sides only, so the video's own vertical FOV holds).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from avctl.camera import (
    CAMERA_SUFFIX,
    DEFAULT_FOV,
    DEPTH_SUFFIX,
    Trajectory,
    camera_control,
    clip_cameras,
    estimate_depth,
    estimate_trajectory,
    fit_depth,
    load_depth,
    sidecar,
)
from avctl.errors import BadInput, BadUsage, MissingWeights
from avctl.modalities.base import Clip, Control, EvalInput, FidelityResult, Modality

BACKENDS = ("opencv", "files", "spatialtracker-v2")
SPATIALTRACKER_NOTE = (
    "SpatialTrackerV2 (github.com/henry123-boy/SpaTrackerV2) is not shipped with avctl: its repository states no "
    "licence we could verify (its predecessor SpaTracker follows CoTracker's CC-BY-NC-4.0), so it cannot be a "
    "default. Run it yourself and write each clip's cameras to <clip>.camera.json (avctl's trajectory JSON, see "
    "avctl.camera.TRAJECTORY_SCHEMA), then use --backend opencv (the sidecar wins) or --backend files")


def clip_source(clip: Clip) -> Path | None:
    """The path of the video a clip was cut from, where the caller says (`Clip.source`); sidecars live next to it."""
    source = getattr(clip, "source", None)
    return Path(source) if source else None


class CameraImageExtractor:
    """Clip → the first frame rendered along the clip's cameras (see the module docstring for the backends)."""

    backend = "opencv"
    version = (f"2 (cameras: <clip>{CAMERA_SUFFIX} else OpenCV LK, rotation + zoom or PnP, {DEFAULT_FOV:g}° vertical "
               f"FOV at frame 0; depth: "
               f"<clip>{DEPTH_SUFFIX} else Depth-Anything-V2; z-buffered point splatting, holes #66FF00)")

    def __init__(self, weights: Path | None = None, backend: str | None = None, depth_model: Any = None) -> None:
        chosen = backend or "opencv"
        if chosen == "spatialtracker-v2":
            raise BadUsage(f"--backend spatialtracker-v2: {SPATIALTRACKER_NOTE}")
        if chosen not in BACKENDS:
            raise BadUsage(f"--backend {chosen}: unknown camera-image backend; use opencv or files")
        self.backend = chosen
        self.depth_model = depth_model
        if chosen == "files":
            if weights is not None:
                raise BadUsage(f"--weights {weights}: --backend files reads depth from <clip>{DEPTH_SUFFIX} and "
                               "loads no model; drop --weights")
        elif depth_model is None:
            from avctl.depth_model import load_depth_model

            try:
                self.depth_model = load_depth_model(weights=weights)
            except MissingWeights as exc:
                raise MissingWeights(f"camera-image needs depth: {exc}; or put a <clip>{DEPTH_SUFFIX} next to every "
                                     "clip and use --backend files") from exc

    def depth(self, clip: Clip, source: Path | None) -> np.ndarray:
        """z-depth [H, W] of the clip's first frame, at bucket size."""
        height, width = clip.frames.shape[1:3]
        path = sidecar(source, DEPTH_SUFFIX) if source else None
        if path is not None and path.is_file():
            depth = load_depth(path)
            return fit_depth(depth[0] if depth.ndim == 3 else depth, width, height)
        if self.backend == "files" or self.depth_model is None:
            where = path.name if path else f"<clip>{DEPTH_SUFFIX} (the clip's path is unknown)"
            raise BadInput(f"no depth: {where} not found (--backend files reads depth from it)")
        return estimate_depth(clip.frames[:1], extractor=self.depth_model)[0]

    def cameras(self, clip: Clip, source: Path | None, depth: np.ndarray) -> Trajectory:
        count = len(clip.frames)
        found = clip_cameras(source, count)
        if found is not None:
            return found
        if self.backend == "files":
            where = (sidecar(source, CAMERA_SUFFIX).name if source else
                     f"<clip>{CAMERA_SUFFIX} (the clip's path is unknown)")
            raise BadInput(f"no cameras: {where} not found (--backend files reads cameras from it)")
        return estimate_trajectory(clip.frames, depth, DEFAULT_FOV)

    def __call__(self, clip: Clip) -> Control:
        source = clip_source(clip)
        depth = self.depth(clip, source)
        trajectory = self.cameras(clip, source, depth)
        # camera_control keeps the point cloud at 2× the reference size at most: denser only costs time
        return Control(frames=camera_control(clip.frames[0], trajectory, depth, clip.reference_size))


def camera_fidelity(inp: EvalInput) -> FidelityResult:
    """`avctl eval` for the camera modalities: rotation error between the requested trajectory (`inp.camera`, the
    preset or .json generated with) and the one re-estimated from the output with OpenCV
    (`avctl.camera.rotation_error`)."""
    from avctl.camera import resolve_camera, rotation_error

    result = FidelityResult()
    if inp.camera is None:
        result.missing["rotation_error_deg"] = ("camera accuracy needs the requested trajectory: pass --camera with "
                                                "the preset or .json the video was generated with")
        return result
    frames = inp.output.frames
    found = rotation_error(resolve_camera(inp.camera, len(frames), inp.fov), frames)
    result.compared.update(camera=inp.camera, frames_estimated=found["frames_estimated"],
                           frames_failed=found["frames_failed"], camera_method=found.get("method"))
    if found["rotation_error_deg"] is None:
        result.missing["rotation_error_deg"] = found.get("reason") or "no frame's camera could be estimated"
        return result
    result.metrics["rotation_error_deg"] = found["rotation_error_deg"]
    result.metrics["rotation_error_max_deg"] = found["rotation_error_max_deg"]
    return result


CAMERA_FIDELITY_NOTE = ("rotation_error_deg (mean) and rotation_error_max_deg: the requested trajectory (--camera) "
                        "vs the one re-estimated from the output")

CAMERA_IMAGE = Modality(
    name="camera-image",
    category="camera",
    description="Animate an image along a camera trajectory (image-to-video camera control).",
    streams=("video",),
    targets=("V.SA", "V.CA", "V.FF"),
    rank=32,
    steps=3000,
    train_samples=3000,
    downscale=4,
    context="noised",
    first_frame_image=True,
    extractor=CameraImageExtractor,
    extractor_note=f"first frame unprojected with depth and rendered along the clip's cameras (torch z-buffered "
    f"splatting, holes #66FF00): cameras from <clip>{CAMERA_SUFFIX} or an OpenCV estimate (LK; rotation + zoom, or "
    f"PnP where parallax shows), depth from "
    f"<clip>{DEPTH_SUFFIX} or Depth-Anything-V2 (--backend files: sidecars only; SpatialTrackerV2 not shipped)",
    fidelity=camera_fidelity,
    fidelity_note=CAMERA_FIDELITY_NOTE,
    camera_from="image",
)
