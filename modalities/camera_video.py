"""Camera from a video (paper §7): synchronized multi-camera videos (SynCamVideo); one camera's video re-rendered
from another camera's trajectory as a dynamic point cloud (holes #66FF00) is the reference, the second camera's
real video the target; reference canvas 1×.

Two ways to data (`avctl prepare camera-video ...`):

* **Plain videos** (a folder or files): the pairs are built here, the paper's recipe from depth and cameras. Each
  clip is the target, seen from its own cameras C (frame 0 = the world). A source camera path N is sampled per clip
  (seeded by --seed and the clip's path: a camera preset other than `static`, strength 0.25..1, anchored at frame
  0's camera), and the reference is what a source camera on N would see, re-rendered into the target's cameras:
  each frame is splatted into the source camera (`splat`, keeping the rendered depth), and that view is re-rendered
  back into the target camera with `avctl.camera.rerender_video` (double reprojection). The reference thus has
  the holes a real source camera on N leaves (what N does not see) and resampling artefacts, and the target is the
  real footage. Per clip:
    - depth: `<clip>.depth.npy` ([F, H, W] or [H, W] z-depth at the video's size), else the world's exact depth
      (`<clip>.npz` with a `depth` array, as `make_world.py --truth` writes), else the depth modality's model
      (Depth-Anything-V2, from --weights, $AVCTL_HOME/weights or the local cache); without any, the clip is
      skipped with the reason.
    - cameras C: `<clip>.camera.json` (avctl's trajectory JSON), else `avctl.camera.estimate_trajectory`; when the
      estimate fails the sampled offsets are taken from each frame's own camera (N_i = C_i·P_i instead of C_0·P_i).
      The pair is exact either way (reference and target share the target's cameras); only the simulated source
      path differs. The summary counts which source each clip used.
* **A pairs manifest** (.jsonl / .csv of source → target): each row's source, already re-rendered into the target's
  cameras (e.g. with `rerender_video` on SynCamVideo's other camera), is taken as the reference as given.

At generation, `avctl.camera.camera_video_control` does the same for a `--from-video` source along a preset or
trajectory JSON, with per-frame depth from the depth modality's model.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from avctl.camera import (
    CAMERA_SUFFIX,
    DEFAULT_FOV,
    DEPTH_SUFFIX,
    PRESETS,
    Trajectory,
    clip_cameras,
    estimate_depth,
    estimate_trajectory,
    fit_depth,
    load_depth,
    normalise_depth,
    paint,
    preset,
    rerender_video,
    sidecar,
    splat,
    subject_depth,
    unproject,
)
from avctl.errors import BadInput, BadUsage, MissingWeights
from avctl.modalities.base import Clip, Control, Modality
from avctl.modalities.camera_image import CAMERA_FIDELITY_NOTE, camera_fidelity

BACKEND = "rerender"
SOURCE_PRESETS = tuple(name for name in PRESETS if name != "static")
STRENGTHS = (0.25, 1.0)  # the sampled preset's strength range
TRUTH_SUFFIX = ".npz"  # the procedural world's exact ground truth next to a clip (avctl.world, `--truth`)


def sample_source_path(seed: int, key: str, frames: int, fov: float = DEFAULT_FOV) -> Trajectory:
    """The source camera path for a clip: a preset (not `static`) at a strength in STRENGTHS, drawn from (seed,
    key) alone, so a rerun or another worker draws the same."""
    digest = hashlib.blake2b(f"camera-video:{seed}:{key}".encode(), digest_size=8).digest()
    rng = np.random.default_rng(int.from_bytes(digest, "little"))
    name = SOURCE_PRESETS[int(rng.integers(len(SOURCE_PRESETS)))]
    return preset(name, frames, float(rng.uniform(*STRENGTHS)), fov)


def _view(image: np.ndarray, depth: np.ndarray, fov: float, rotation: np.ndarray, translation: np.ndarray,
          target_fov: float, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """`image` with z-depth `depth` (its camera = the world) seen from camera (`rotation`, `translation`,
    `target_fov`): (frame [h, w, 3] uint8 with holes #66FF00, z-depth [h, w] in that camera, NaN on holes)."""
    points, footprint = unproject(depth, fov)
    index = splat(points, footprint, rotation, translation, target_fov, size, grid=depth.shape)
    z = ((points - translation) @ rotation)[:, 2]
    seen = np.where(index >= 0, z[np.clip(index, 0, None)], np.nan).astype(np.float32)
    return paint(index, image.reshape(-1, 3)), seen


def pair_reference(frames: np.ndarray, depth: np.ndarray, source: Trajectory, cameras: Trajectory | None,
                   size: tuple[int, int]) -> np.ndarray:
    """The reference of a pair whose target is `frames` [F, H, W, 3] with z-depth `depth` [F, H, W] (subject units,
    the same scale as `cameras`' translations): what a camera on `source` (frame 0's camera coordinates) sees,
    re-rendered into the target's cameras (`cameras`, relative to frame 0; None = the source offsets are taken from
    each frame's own camera). Returns [F, h, w, 3] uint8 at `size`, holes #66FF00."""
    height, width = frames.shape[1:3]
    out = np.empty((len(frames), *size, 3), dtype=np.uint8)
    for i in range(len(frames)):
        rot_n, t_n = source.rotations[i], source.translations[i]
        if cameras is not None:  # the source camera in the target camera's coordinates: C_i⁻¹ N_i
            rot_c, t_c, fov_c = cameras.rotations[i], cameras.translations[i], float(cameras.fov[i])
            rot_s, t_s = rot_c.T @ rot_n, rot_c.T @ (t_n - t_c)
        else:
            rot_s, t_s, fov_c = rot_n, t_n, float(source.fov[0])
        fov_n = float(source.fov[i])
        seen, z = _view(frames[i], depth[i], fov_c, rot_s, t_s, fov_n, (height, width))
        back = Trajectory(rot_s.T[None], (-rot_s.T @ t_s)[None], np.array([fov_c]), unit="depth",
                          where="camera-video pair")
        out[i] = rerender_video(seen[None], z[None], back, size, source_fov=fov_n)[0][0]
    return out


class CameraVideoPairs:
    """Plain clip → (reference, the clip as target) by double reprojection along a sampled source camera path (see
    the module docstring). The depth model loads on the first clip that needs it."""

    backend = BACKEND
    version = (f"1 (depth: <clip>{DEPTH_SUFFIX}, <clip>{TRUTH_SUFFIX} truth, else Depth-Anything-V2; cameras: "
               f"<clip>{CAMERA_SUFFIX} else OpenCV estimate, else per frame; one sampled preset path per clip, "
               f"strength {STRENGTHS[0]:g}..{STRENGTHS[1]:g}; splat + rerender_video, holes #66FF00)")

    def __init__(self, weights: Path | None = None, backend: str | None = None, depth_model: Any = None) -> None:
        if backend not in (None, BACKEND):
            raise BadUsage(f"--backend {backend}: camera-video builds pairs with {BACKEND!r} only")
        self.weights = weights
        self.depth_model = depth_model
        self.depth_missing: str | None = None
        if weights is not None and depth_model is None:  # weights named on purpose must load now
            self._model()

    def _model(self) -> Any:
        if self.depth_model is None and self.depth_missing is None:
            from avctl.modalities.depth import depth_extractor

            try:
                self.depth_model = depth_extractor(weights=self.weights)
            except MissingWeights as exc:
                if self.weights is not None:
                    raise
                self.depth_missing = str(exc)
        return self.depth_model

    def depth(self, clip: Clip, source: Path | None) -> tuple[np.ndarray, str]:
        """z-depth [F, H, W] at bucket size and where it came from."""
        count, height, width = clip.frames.shape[:3]
        path = sidecar(source, DEPTH_SUFFIX) if source else None
        if path is not None and path.is_file():
            found = load_depth(path)
            if found.ndim == 3 and len(found) < count:
                raise BadInput(f"{path.name}: depth for {len(found)} frames, the clip has {count}")
            found = found[:count] if found.ndim == 3 else np.repeat(found[None], count, axis=0)
            return fit_depth(found, width, height), f"<clip>{DEPTH_SUFFIX}"
        truth = source.with_suffix(TRUTH_SUFFIX) if source else None
        if truth is not None and truth.is_file():
            try:
                with np.load(truth, allow_pickle=False) as data:
                    found = data["depth"] if "depth" in data.files else None
            except (OSError, ValueError) as exc:
                raise BadInput(f"{truth.name}: unreadable ground truth ({exc})") from exc
            if found is not None and found.ndim == 3 and len(found) >= count:
                return fit_depth(found[:count].astype(np.float32), width, height), "world truth"
        model = self._model()
        if model is None:
            raise BadInput(f"no depth: no <clip>{DEPTH_SUFFIX} or world truth <clip>{TRUTH_SUFFIX} next to it, and "
                           f"the depth model is not available ({self.depth_missing})")
        return estimate_depth(clip.frames, extractor=model), "depth model"

    def cameras(self, clip: Clip, source: Path | None, depth: np.ndarray) -> tuple[Trajectory | None, str]:
        """The clip's cameras relative to frame 0 in subject units (None when unknown) and where they came from."""
        count = len(clip.frames)
        found = clip_cameras(source, count)
        if found is not None:
            rel = found.relative_to_first()
            scale = 1.0 / subject_depth(depth[0]) if rel.unit == "depth" else 1.0
            return Trajectory(rel.rotations, rel.translations * scale, rel.fov, rel.name, "subject"), \
                f"<clip>{CAMERA_SUFFIX}"
        try:
            return estimate_trajectory(clip.frames, depth[0], DEFAULT_FOV), "estimate"
        except BadInput:  # e.g. too few trackable points: the pair is still exact, see the module docstring
            return None, "none (estimate failed)"

    def __call__(self, clip: Clip) -> Control:
        source = Path(clip.source) if clip.source else None
        depth, depth_from = self.depth(clip, source)
        if not np.isfinite(depth).all() or depth.min() <= 0:
            raise BadInput("the depth has non-positive or non-finite values")
        scene = normalise_depth(depth)
        cameras, cameras_from = self.cameras(clip, source, depth)
        fov = float(cameras.fov[0]) if cameras is not None else DEFAULT_FOV
        path = sample_source_path(clip.seed, clip.key, len(clip.frames), fov)
        frames = pair_reference(clip.frames, scene, path, cameras, clip.reference_size)
        return Control(frames=frames, notes={"depth": depth_from, "camera": cameras_from, "source path": path.name})


CAMERA_VIDEO = Modality(
    name="camera-video",
    category="camera",
    description="Re-render a video along a new camera trajectory.",
    streams=("video",),
    targets=("V.SA",),
    rank=128,
    steps=10000,
    train_samples=10000,
    downscale=1,
    context="noised",
    paired=True,
    extractor=CameraVideoPairs,
    extractor_note="pairs: from plain videos, the clip is the target and the reference is a sampled source camera's "
    "view re-rendered into the clip's cameras (depth from <clip>.depth.npy, the world's truth or Depth-Anything-V2; "
    "cameras from <clip>.camera.json or an OpenCV estimate; avctl.camera.rerender_video), or from a pairs manifest "
    "(.jsonl / .csv: source = one camera already re-rendered into the target camera, target = the other camera's "
    "real video, e.g. SynCamVideo)",
    fidelity=camera_fidelity,
    fidelity_note=CAMERA_FIDELITY_NOTE,
    camera_from="video",
)
