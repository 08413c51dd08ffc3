"""Camera control: trajectories as data, point-cloud rendering, and a camera-accuracy metric.

A trajectory has one entry per output frame: the camera-to-world rotation R and camera centre t in OpenCV axes
(x right, y down, z forward) and a vertical field of view in degrees. FOV per frame is what lets a trajectory say
"dolly zoom" (move in while widening the view so the subject keeps its size), which extrinsics alone cannot.

Units. Translations are in *subject units* by default: depth maps are rescaled so that the subject (the median depth
of the image's central third) is 1.0 away, so "dolly in by 0.5" means halfway to the subject whatever the depth
model's scale. A trajectory written with `"translation_unit": "depth"` is used in the depth map's own units instead
(only meaningful with a metric depth file that matches it).

Rendering (the paper's "canonical grid", §7): every pixel of a source image is unprojected with its depth into a
3-D point, and the points are forward-splatted into each target camera with a z-buffer (torch, no renderer
dependency). A point covers the target pixels whose centres fall inside its projected footprint — the quad its
source pixel spans at the target camera, measured from where its grid neighbours land (the fronto-parallel size
`f_target · (z_source / f_source) / z_target` across depth edges), 10 % enlarged — so a dolly-in magnifies points
instead of leaving cracks, and a disocclusion is not smeared over. Among points of one surface the one whose centre
is nearest wins. Pixels no point reaches are disocclusions (or out of the source view) and are painted #66FF00, the
mask colour used throughout avctl.

Camera accuracy (`rotation_error`): the rotation from frame 0 to each frame of a video, re-estimated from LK tracks
(homography / essential matrix, OpenCV), against the requested one; `estimate_trajectory` (dense LK tracks; rotation
+ zoom per frame, or PnP on tracks lifted with depth where parallax shows a translation) is the offline camera
estimate `prepare` uses for camera-image when a clip has no camera JSON. `score_camera` scores an estimate against
a known camera (the world's truth, `avctl.world`), `rotate_image` makes exact synthetic pans of a photo.

Conventions: pixel centres are at integer coordinates, principal point at the image centre ((W-1)/2, (H-1)/2),
square pixels. For camera-image the input image is the view of trajectory frame 0 (poses are taken relative to it,
and its FOV is frame 0's); for camera-video the world is the source camera.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from avctl.errors import BadInput, BadUsage, MissingWeights

HOLE_COLOUR = (0x66, 0xFF, 0x00)  # #66FF00: disocclusions, as inpaint masks (extractors.md §4)
DEFAULT_FOV = 50.0  # vertical degrees, when neither the trajectory nor an estimate says otherwise
FORMAT = "avctl-camera"
VERSION = 1
CONVENTION = ("OpenCV camera-to-world: x right, y down, z forward; R maps camera axes to world axes, t is the "
              "camera centre in world coordinates; fov is the vertical field of view in degrees")
UNITS = ("subject", "depth")
ORTHONORMAL_TOLERANCE = 1e-3  # JSON written with ~4 decimals must still load
FOOTPRINT_MARGIN = 1.1  # footprints 10 % larger than the local-affine estimate: covers perspective/rounding slack
MAX_FOOTPRINT = 24  # px: a point never covers more than this many pixels across (extreme close-ups)
NEAR = 1e-3  # subject units: points closer to (or behind) the camera are dropped
DEPTH_TOLERANCE = 0.01  # relative depth within which the z-test counts two points as one surface
DEPTH_JUMP = 0.05  # relative source-depth step between neighbouring pixels taken as an edge (not one surface)
MAX_STRETCH = 4.0  # a splat is never more than this many times its fronto-parallel size
ROTATION_ONLY_SUPPORT = 0.95  # a pure rotation must explain this share of the essential matrix's inliers
# Relative inverse depth (Depth-Anything) has an unknown shift; mapping its clip-wide 2nd..98th percentile range to
# depths 1..FAR_RATIO (then rescaling to the subject) is avctl's choice of a plausible scene depth range.
FAR_RATIO = 10.0
CAMERA_SUFFIX = ".camera.json"  # per-clip camera sidecar: clip.mp4 -> clip.camera.json
DEPTH_SUFFIX = ".depth.npy"  # per-clip depth sidecar: clip.mp4 -> clip.depth.npy ([H, W] or [F, H, W] z-depth)

#: A small JSON Schema of the trajectory file (validation is done by `trajectory_from_dict`, which gives one-line
#: errors; this is for users and editors).
TRAJECTORY_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "avctl camera trajectory",
    "type": "object",
    "required": ["frames"],
    "properties": {
        "format": {"const": FORMAT},
        "version": {"const": VERSION},
        "name": {"type": "string"},
        "convention": {"type": "string"},
        "translation_unit": {"enum": list(UNITS), "default": "subject"},
        "fov": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 180,
                "description": "default vertical FOV (degrees) for frames without one"},
        "frames": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["R", "t"],
                "properties": {
                    "R": {"type": "array", "minItems": 3, "maxItems": 3,
                          "items": {"type": "array", "minItems": 3, "maxItems": 3, "items": {"type": "number"}}},
                    "t": {"type": "array", "minItems": 3, "maxItems": 3, "items": {"type": "number"}},
                    "fov": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 180},
                },
            },
        },
    },
}


# ------------------------------------------------------------------------------------------------ trajectories
@dataclass(frozen=True)
class Trajectory:
    """Per-frame cameras: `rotations` [F, 3, 3] camera-to-world, `translations` [F, 3] camera centres,
    `fov` [F] vertical degrees. Validated on construction (BadInput with the first bad frame)."""

    rotations: np.ndarray
    translations: np.ndarray
    fov: np.ndarray
    name: str = ""
    unit: str = "subject"
    where: str = field(default="trajectory", compare=False, repr=False)  # names the source in error messages

    def __post_init__(self) -> None:
        rot = np.asarray(self.rotations, dtype=np.float64)
        trans = np.asarray(self.translations, dtype=np.float64)
        fov = np.asarray(self.fov, dtype=np.float64).reshape(-1)
        count = len(fov)
        if count == 0:
            raise BadInput(f"{self.where}: no frames; give one camera per output frame")
        if rot.shape != (count, 3, 3) or trans.shape != (count, 3):
            raise BadInput(f"{self.where}: expected R [{count}, 3, 3] and t [{count}, 3], got {list(rot.shape)} "
                           f"and {list(trans.shape)}")
        if self.unit not in UNITS:
            raise BadInput(f"{self.where}: translation_unit {self.unit!r}; use one of {', '.join(UNITS)}")
        for i in range(count):
            check_rotation(rot[i], f"{self.where}: frame {i}")
            if not np.all(np.isfinite(trans[i])):
                raise BadInput(f"{self.where}: frame {i}: t is not finite")
            if not (0.0 < fov[i] < 180.0):
                raise BadInput(f"{self.where}: frame {i}: fov {fov[i]:g}° is outside (0, 180); give the vertical "
                               "field of view in degrees")
        object.__setattr__(self, "rotations", np.stack([nearest_rotation(r) for r in rot]))
        object.__setattr__(self, "translations", trans)
        object.__setattr__(self, "fov", fov)

    def __len__(self) -> int:
        return len(self.fov)

    def relative_to_first(self) -> Trajectory:
        """The same cameras in frame 0's camera coordinates (frame 0 becomes the identity)."""
        r0, t0 = self.rotations[0], self.translations[0]
        rotations = np.einsum("ji,fjk->fik", r0, self.rotations)  # R0ᵀ R_f
        translations = (self.translations - t0) @ r0  # R0ᵀ (t_f − t0), row vectors
        return Trajectory(rotations, translations, self.fov.copy(), self.name, self.unit, self.where)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "name": self.name,
            "convention": CONVENTION,
            "translation_unit": self.unit,
            "frames": [{"R": r.tolist(), "t": t.tolist(), "fov": float(f)}
                       for r, t, f in zip(self.rotations, self.translations, self.fov, strict=True)],
        }


def check_rotation(matrix: np.ndarray, where: str) -> None:
    """BadInput unless `matrix` is a finite proper rotation (RᵀR = I within ORTHONORMAL_TOLERANCE, det +1)."""
    if not np.all(np.isfinite(matrix)):
        raise BadInput(f"{where}: R is not finite")
    deviation = float(np.abs(matrix.T @ matrix - np.eye(3)).max())
    if deviation > ORTHONORMAL_TOLERANCE:
        raise BadInput(f"{where}: R is not orthonormal (|RᵀR − I| = {deviation:.3g} > {ORTHONORMAL_TOLERANCE:g}); "
                       "give a rotation matrix (camera-to-world, OpenCV axes)")
    if np.linalg.det(matrix) < 0:
        raise BadInput(f"{where}: R has determinant −1 (a reflection); axes must be right-handed (x right, y down, "
                       "z forward)")


def nearest_rotation(matrix: np.ndarray) -> np.ndarray:
    """The rotation closest to `matrix` (SVD polar factor): removes JSON rounding."""
    u, _, vt = np.linalg.svd(matrix)
    rot = u @ vt
    if np.linalg.det(rot) < 0:
        rot = u @ np.diag([1.0, 1.0, -1.0]) @ vt
    return rot


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadInput(f"{where}: expected a number, got {json.dumps(value)[:40]}")
    return float(value)


def _matrix(value: Any, rows: int, cols: int, where: str) -> np.ndarray:
    if rows == 1:
        if not isinstance(value, list) or len(value) != cols:
            raise BadInput(f"{where}: expected a list of {cols} numbers")
        return np.array([_number(v, where) for v in value])
    if not isinstance(value, list) or len(value) != rows:
        raise BadInput(f"{where}: expected {rows} rows of {cols} numbers (a {rows}×{cols} matrix)")
    return np.stack([_matrix(row, 1, cols, where) for row in value])


def trajectory_from_dict(data: Any, where: str = "trajectory", frames: int | None = None) -> Trajectory:
    """Parse and validate the JSON form (see TRAJECTORY_SCHEMA). `frames`, when given, is the count it must have."""
    if not isinstance(data, dict) or not isinstance(data.get("frames"), list):
        raise BadInput(f"{where}: expected a JSON object with a \"frames\" list (one camera per output frame)")
    if data.get("format", FORMAT) != FORMAT or data.get("version", VERSION) != VERSION:
        raise BadInput(f"{where}: format {data.get('format')!r} version {data.get('version')!r}; this avctl reads "
                       f"{FORMAT!r} version {VERSION}")
    entries = data["frames"]
    if frames is not None and len(entries) != frames:
        raise BadInput(f"{where}: {len(entries)} cameras, but the video has {frames} frames; give one camera per "
                       "frame")
    default_fov = data.get("fov", DEFAULT_FOV)
    rotations, translations, fovs = [], [], []
    for i, entry in enumerate(entries):
        here = f"{where}: frame {i}"
        if not isinstance(entry, dict) or "R" not in entry or "t" not in entry:
            raise BadInput(f"{here}: expected {{\"R\": 3×3, \"t\": [x, y, z], \"fov\": degrees}}")
        rotations.append(_matrix(entry["R"], 3, 3, f"{here}: R"))
        translations.append(_matrix(entry["t"], 1, 3, f"{here}: t"))
        fovs.append(_number(entry.get("fov", default_fov), f"{here}: fov"))
    unit = data.get("translation_unit", "subject")
    name = data.get("name", "")
    return Trajectory(np.array(rotations), np.array(translations), np.array(fovs),
                      name=name if isinstance(name, str) else "", unit=str(unit), where=where)


def load_trajectory(path: str | Path, frames: int | None = None) -> Trajectory:
    """Read a trajectory JSON file (BadInput with a one-line reason when it is unusable)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise BadInput(f"{path}: camera trajectory not found") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInput(f"{path}: unreadable camera trajectory ({exc})") from exc
    except json.JSONDecodeError as exc:
        raise BadInput(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno})") from exc
    return trajectory_from_dict(data, str(path), frames)


def save_trajectory(trajectory: Trajectory, path: str | Path) -> Path:
    """Write the trajectory as JSON, atomically."""
    from avctl.io import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(trajectory.to_dict(), indent=1) + "\n", encoding="utf-8")
    return path


# ----------------------------------------------------------------------------------------------------- presets
def rot_x(degrees: float) -> np.ndarray:
    """Rotation about the camera x axis; positive tilts the view up (z turns toward −y)."""
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]], dtype=np.float64)


def rot_y(degrees: float) -> np.ndarray:
    """Rotation about the camera y axis (down); positive pans the view right (z turns toward +x)."""
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]], dtype=np.float64)


@dataclass(frozen=True)
class Preset:
    name: str
    description: str  # what strength 1 does
    build: Callable[[float, float], tuple[np.ndarray, np.ndarray, float]]  # (progress 0..1, strength) → R, t, fov×


def _fov_scale(fov: float, scale: float) -> float:
    """The FOV whose tan(fov/2) is `scale` times tan(`fov`/2)."""
    return math.degrees(2 * math.atan(math.tan(math.radians(fov) / 2) * scale))


_I3, _ZERO = np.eye(3), np.zeros(3)
MOVE = 0.5  # subject units at strength 1 (half the distance to the subject)
PAN, TILT, ORBIT = 30.0, 20.0, 30.0  # degrees at strength 1


def _translate(direction: tuple[float, float, float]) -> Callable[[float, float], tuple[np.ndarray, np.ndarray, float]]:
    return lambda p, s: (_I3, np.array(direction) * MOVE * s * p, 1.0)


def _orbit(sign: float) -> Callable[[float, float], tuple[np.ndarray, np.ndarray, float]]:
    def build(p: float, s: float) -> tuple[np.ndarray, np.ndarray, float]:
        angle = math.radians(ORBIT * s * p) * sign  # >0: the camera moves right around the subject at (0, 0, 1)
        centre = np.array([math.sin(angle), 0.0, 1.0 - math.cos(angle)])
        return rot_y(-math.degrees(angle)), centre, 1.0
    return build


def _dolly_zoom(direction: float) -> Callable[[float, float], tuple[np.ndarray, np.ndarray, float]]:
    def build(p: float, s: float) -> tuple[np.ndarray, np.ndarray, float]:
        forward = direction * MOVE * s * p
        # projected size ∝ 1 / (tan(fov/2) · distance): keep it for the subject at distance 1
        return _I3, np.array([0.0, 0.0, forward]), 1.0 / (1.0 - forward)
    return build


PRESETS: dict[str, Preset] = {p.name: p for p in [
    Preset("static", "no camera motion", lambda p, s: (_I3, _ZERO, 1.0)),
    Preset("dolly-in", f"move forward {MOVE:g}× the subject distance", _translate((0, 0, 1))),
    Preset("dolly-out", f"move back {MOVE:g}× the subject distance", _translate((0, 0, -1))),
    Preset("truck-left", f"move left {MOVE:g}× the subject distance", _translate((-1, 0, 0))),
    Preset("truck-right", f"move right {MOVE:g}× the subject distance", _translate((1, 0, 0))),
    Preset("crane-up", f"move up {MOVE:g}× the subject distance", _translate((0, -1, 0))),
    Preset("crane-down", f"move down {MOVE:g}× the subject distance", _translate((0, 1, 0))),
    Preset("pan-left", f"turn left {PAN:g}°", lambda p, s: (rot_y(-PAN * s * p), _ZERO, 1.0)),
    Preset("pan-right", f"turn right {PAN:g}°", lambda p, s: (rot_y(PAN * s * p), _ZERO, 1.0)),
    Preset("tilt-up", f"tilt up {TILT:g}°", lambda p, s: (rot_x(TILT * s * p), _ZERO, 1.0)),
    Preset("tilt-down", f"tilt down {TILT:g}°", lambda p, s: (rot_x(-TILT * s * p), _ZERO, 1.0)),
    Preset("orbit-left", f"circle {ORBIT:g}° left around the subject, facing it", _orbit(-1.0)),
    Preset("orbit-right", f"circle {ORBIT:g}° right around the subject, facing it", _orbit(1.0)),
    Preset("zoom-in", f"narrow the FOV ({1 + MOVE:g}× magnification), camera still",
           lambda p, s: (_I3, _ZERO, 1.0 / (1.0 + MOVE * s * p))),
    Preset("zoom-out", f"widen the FOV (1/{1 + MOVE:g}× magnification), camera still",
           lambda p, s: (_I3, _ZERO, 1.0 + MOVE * s * p)),
    Preset("dolly-zoom-in", f"vertigo: move forward {MOVE:g}× the subject distance while widening the FOV so the "
           "subject keeps its size (the background recedes)", _dolly_zoom(1.0)),
    Preset("dolly-zoom-out", f"vertigo: move back {MOVE:g}× the subject distance while narrowing the FOV so the "
           "subject keeps its size (the background closes in)", _dolly_zoom(-1.0)),
]}


def describe_presets() -> list[dict[str, str]]:
    """[{"name", "description"}] of every preset, for --help: distances in subject units, at strength 1."""
    return [{"name": p.name, "description": p.description} for p in PRESETS.values()]


def presets_help() -> str:
    """One line per preset for `--camera` help: `name — what it does (strength 1)`."""
    return "\n".join(f"{p['name']} — {p['description']}" for p in describe_presets())


def preset(name: str, frames: int, strength: float = 1.0, fov: float = DEFAULT_FOV) -> Trajectory:
    """A preset trajectory of `frames` cameras, moving linearly from the identity (frame 0) to the preset's full
    motion at the last frame, scaled by `strength` (1 = the amounts in `describe_presets`, 0.5 = half). `fov` is
    frame 0's vertical FOV (the input image's)."""
    if name not in PRESETS:
        raise BadUsage(f"unknown camera preset {name!r}; use one of {', '.join(PRESETS)} or a trajectory .json")
    if frames < 1:
        raise BadUsage(f"camera preset {name!r}: frames must be ≥ 1, got {frames}")
    if not (math.isfinite(strength) and strength > 0):
        raise BadUsage(f"camera preset {name!r}: strength must be a positive number, got {strength:g}")
    if not (0 < fov < 180):
        raise BadUsage(f"camera preset {name!r}: fov {fov:g}° is outside (0, 180)")
    rotations, translations, fovs = [], [], []
    for k in range(frames):
        rot, trans, scale = PRESETS[name].build(k / max(1, frames - 1), strength)
        rotations.append(rot)
        translations.append(trans)
        fovs.append(_fov_scale(fov, scale) if scale != 1.0 else fov)
    if name in ("dolly-in", "dolly-zoom-in") and MOVE * strength >= 0.9:
        raise BadUsage(f"camera preset {name!r}: strength {strength:g} moves the camera to within "
                       f"{1 - MOVE * strength:.2g} of the subject; use strength < {0.9 / MOVE:g}")
    if max(fovs) >= 175.0:
        raise BadUsage(f"camera preset {name!r}: strength {strength:g} needs a {max(fovs):.0f}° field of view; "
                       "use a smaller strength")
    return Trajectory(np.array(rotations), np.array(translations), np.array(fovs), name=name, where=name)


def resolve_camera(spec: str, frames: int, fov: float = DEFAULT_FOV) -> Trajectory:
    """`--camera` value → trajectory: a preset name with an optional `@STRENGTH` (e.g. `orbit-left@0.5`), or a
    trajectory .json file (which must have `frames` cameras)."""
    name, _, strength = spec.partition("@")
    if name in PRESETS:
        try:
            value = float(strength) if strength else 1.0
        except ValueError as exc:
            raise BadUsage(f"--camera {spec}: strength {strength!r} is not a number (e.g. {name}@0.5)") from exc
        return preset(name, frames, value, fov)
    if spec.lower().endswith(".json") or Path(spec).is_file():
        return load_trajectory(spec, frames)
    raise BadUsage(f"--camera {spec}: not a preset ({', '.join(PRESETS)}) nor a trajectory .json file")


# ---------------------------------------------------------------------------------------------------- geometry
def focal_from_fov(fov: float, height: int) -> float:
    """Focal length in pixels for a vertical FOV (degrees) over `height` pixels."""
    return (height / 2.0) / math.tan(math.radians(fov) / 2.0)


def intrinsics(fov: float, height: int, width: int) -> np.ndarray:
    """3×3 K: square pixels, vertical FOV `fov`, principal point at the image centre (pixel centres at integers)."""
    f = focal_from_fov(fov, height)
    return np.array([[f, 0.0, (width - 1) / 2.0], [0.0, f, (height - 1) / 2.0], [0.0, 0.0, 1.0]])


def unproject(depth: np.ndarray, fov: float) -> tuple[np.ndarray, np.ndarray]:
    """z-depth [H, W] → (camera-space points [H·W, 3], footprint [H·W]: each pixel's width in scene units)."""
    height, width = depth.shape
    k = intrinsics(fov, height, width)
    v, u = np.mgrid[0:height, 0:width].astype(np.float64)
    z = depth.astype(np.float64)
    points = np.stack([(u - k[0, 2]) / k[0, 0] * z, (v - k[1, 2]) / k[1, 1] * z, z], axis=-1).reshape(-1, 3)
    return points, (z / k[0, 0]).reshape(-1)


def _grid_half_extents(u: torch.Tensor, v: torch.Tensor, fronto: torch.Tensor, source_z: torch.Tensor,
                       ok: torch.Tensor, grid: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-point half-extents (x, y) in target pixels of the projected source pixel, from where its grid neighbours
    land: the projected quad spanned by the x-neighbour and y-neighbour steps covers ±½(|du_x| + |du_y|) across and
    ±½(|dv_x| + |dv_y|) down. A neighbour across a depth edge (source depths differing by more than DEPTH_JUMP) or
    dropped does not count; without one, the fronto-parallel size is used, and no extent exceeds
    MAX_STRETCH × that size, so a soft depth edge cannot stretch into a rubber sheet over a disocclusion."""
    height, width = grid
    u, v, fronto, zs, ok = (a.view(height, width) for a in (u, v, fronto, source_z, ok))
    steps = []
    for dim in (1, 0):  # neighbours along x (columns), then along y (rows)
        first = [slice(None), slice(None)]
        second = [slice(None), slice(None)]
        first[dim], second[dim] = slice(None, -1), slice(1, None)
        a, b = tuple(first), tuple(second)
        near = torch.minimum(zs[a], zs[b])
        link = ok[a] & ok[b] & ((zs[a] - zs[b]).abs() <= DEPTH_JUMP * near)
        du = torch.where(link, (u[b] - u[a]).abs(), torch.zeros_like(near))
        dv = torch.where(link, (v[b] - v[a]).abs(), torch.zeros_like(near))
        pad = (0, 1) if dim == 1 else (0, 0, 0, 1)
        pad_before = (1, 0) if dim == 1 else (0, 0, 1, 0)
        linked = torch.maximum(torch.nn.functional.pad(link.double(), pad),
                               torch.nn.functional.pad(link.double(), pad_before)) > 0
        step_u = torch.maximum(torch.nn.functional.pad(du, pad), torch.nn.functional.pad(du, pad_before))
        step_v = torch.maximum(torch.nn.functional.pad(dv, pad), torch.nn.functional.pad(dv, pad_before))
        # no continuous neighbour: the fronto-parallel step along this grid axis
        step_u = torch.where(linked, step_u, fronto if dim == 1 else torch.zeros_like(fronto))
        step_v = torch.where(linked, step_v, torch.zeros_like(fronto) if dim == 1 else fronto)
        steps.append((step_u, step_v))
    cap = MAX_STRETCH * fronto
    half_x = torch.minimum(0.5 * (steps[0][0] + steps[1][0]), cap)
    half_y = torch.minimum(0.5 * (steps[0][1] + steps[1][1]), cap)
    return half_x.reshape(-1), half_y.reshape(-1)


def splat(points: np.ndarray, footprint: np.ndarray, rotation: np.ndarray, translation: np.ndarray, fov: float,
          size: tuple[int, int], device: str | torch.device = "cpu", grid: tuple[int, int] | None = None) -> np.ndarray:
    """Z-buffered forward splatting: world points [N, 3] with footprints [N] (scene units: the width of the source
    pixel) into the camera (camera-to-world `rotation`, centre `translation`, vertical `fov`) at `size` (height,
    width). With `grid` = (H, W), the points are an unprojected H×W image (row-major) and each footprint follows
    the projected pixel's actual shape (`_grid_half_extents`); otherwise it is the fronto-parallel size
    f·footprint/z. Points closer than NEAR or not finite are dropped.

    Returns the index map [h, w] int64 of the point seen at each pixel, −1 where none covers it (a hole). The
    z-test treats depths within DEPTH_TOLERANCE as one surface and then prefers the point whose centre is
    closest, so magnified points do not overwrite better-placed neighbours."""
    height, width = size
    k = intrinsics(fov, height, width)
    pts = torch.as_tensor(points, dtype=torch.float64, device=device)
    cam = (pts - torch.as_tensor(translation, dtype=torch.float64, device=device)) @ torch.as_tensor(
        rotation, dtype=torch.float64, device=device)  # Rᵀ (X − t) as row vectors
    z = cam[:, 2]
    ok = torch.isfinite(cam).all(dim=1) & (z > NEAR)
    safe_z = torch.where(ok, z, torch.ones_like(z))
    u = k[0, 0] * cam[:, 0] / safe_z + k[0, 2]
    v = k[1, 1] * cam[:, 1] / safe_z + k[1, 2]
    source = torch.as_tensor(footprint, dtype=torch.float64, device=device)
    ok &= torch.isfinite(source) & (source > 0)  # a source pixel with no positive depth is no point
    fronto = torch.nan_to_num(source * k[0, 0] / safe_z)
    if grid is not None:
        half_x, half_y = _grid_half_extents(u, v, fronto, source, ok, grid)
    else:
        half_x = half_y = fronto / 2.0
    half_x = torch.clamp(half_x * FOOTPRINT_MARGIN, min=0.5, max=MAX_FOOTPRINT / 2.0)
    half_y = torch.clamp(half_y * FOOTPRINT_MARGIN, min=0.5, max=MAX_FOOTPRINT / 2.0)
    keep = torch.nonzero(ok).squeeze(1)
    u, v, z, half_x, half_y = u[keep], v[keep], z[keep], half_x[keep], half_y[keep]
    x0 = torch.clamp(torch.ceil(u - half_x), min=0)
    x1 = torch.clamp(torch.floor(u + half_x), max=width - 1)
    y0 = torch.clamp(torch.ceil(v - half_y), min=0)
    y1 = torch.clamp(torch.floor(v + half_y), max=height - 1)
    nx, ny = (x1 - x0 + 1).long(), (y1 - y0 + 1).long()
    inside = torch.nonzero((nx > 0) & (ny > 0)).squeeze(1)
    keep, u, v, z = keep[inside], u[inside], v[inside], z[inside]
    x0, y0, nx, ny = x0[inside].long(), y0[inside].long(), nx[inside], ny[inside]
    # One int64 key per (point, pixel): depth bucket (log scale, DEPTH_TOLERANCE wide) | distance of the pixel to
    # the point's centre (1/16 px) | point index, so a single scatter-amin is the z-test, the tie-break and tells
    # which point won.
    bucket = torch.floor(torch.log(z / NEAR) / math.log1p(DEPTH_TOLERANCE)).long().clamp(0, (1 << 22) - 1)
    base = (bucket << 40) | keep.to(torch.int64)
    empty = torch.iinfo(torch.int64).max
    zbuf = torch.full((height * width,), empty, dtype=torch.int64, device=device)
    # every (point, covered pixel) pair at once: point i covers nx[i]·ny[i] pixels, enumerated row by row
    counts = nx * ny
    owner = torch.repeat_interleave(torch.arange(len(counts), device=device), counts)
    local = torch.arange(len(owner), device=device) - torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
    px = x0[owner] + local % nx[owner]
    py = y0[owner] + torch.div(local, nx[owner], rounding_mode="floor")
    distance = torch.hypot(px - u[owner], py - v[owner])
    rank = torch.clamp(torch.round(distance * 16), max=255).long()
    zbuf.scatter_reduce_(0, py * width + px, base[owner] | (rank << 32), reduce="amin")
    index = torch.where(zbuf == empty, torch.full_like(zbuf, -1), zbuf & 0xFFFFFFFF)
    return index.view(height, width).cpu().numpy()


def paint(index: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """Index map [h, w] + point colours [N, 3] uint8 → image [h, w, 3] uint8 with holes #66FF00."""
    out = np.empty((*index.shape, 3), dtype=np.uint8)
    out[:] = HOLE_COLOUR
    hit = index >= 0
    out[hit] = colours[index[hit]]
    return out


def render_views(image: np.ndarray, depth: np.ndarray, source_fov: float, rotations: np.ndarray,
                 translations: np.ndarray, fovs: np.ndarray, size: tuple[int, int],
                 device: str | torch.device = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """Render the point cloud of `image` [H, W, 3] uint8 with z-depth [H, W] (source camera = world, vertical
    `source_fov`) from each camera. Returns (frames [F, h, w, 3] uint8 with holes #66FF00, holes [F, h, w] bool)."""
    if image.shape[:2] != depth.shape:
        raise BadInput(f"image {image.shape[:2]} and depth {depth.shape} differ in size")
    points, footprint = unproject(depth, source_fov)  # non-finite or non-positive depths are dropped by splat
    colours = image.reshape(-1, 3)
    frames = np.empty((len(fovs), *size, 3), dtype=np.uint8)
    holes = np.empty((len(fovs), *size), dtype=bool)
    for i, (rot, trans, fov) in enumerate(zip(rotations, translations, fovs, strict=True)):
        index = splat(points, footprint, rot, trans, float(fov), size, device, grid=depth.shape)
        frames[i], holes[i] = paint(index, colours), index < 0
    return frames, holes


# ------------------------------------------------------------------------------------------------------- depth
def subject_depth(depth: np.ndarray) -> float:
    """The subject's distance: the median depth of the image's central third."""
    height, width = depth.shape[-2:]
    centre = depth[..., height // 3 : height - height // 3, width // 3 : width - width // 3]
    finite = centre[np.isfinite(centre) & (centre > 0)]
    if finite.size == 0:
        raise BadInput("the depth map has no positive finite values in its centre")
    return float(np.median(finite))


def normalise_depth(depth: np.ndarray, reference: np.ndarray | None = None) -> np.ndarray:
    """Rescale z-depth so the subject of `reference` (default: `depth`, or its first frame) is 1.0 away."""
    ref = reference if reference is not None else (depth[0] if depth.ndim == 3 else depth)
    return (depth / subject_depth(ref)).astype(np.float32)


def disparity_to_depth(disparity: np.ndarray) -> np.ndarray:
    """Relative inverse depth (larger = nearer; any scale and shift) → z-depth: its 2nd..98th percentile range
    (over the whole array, so a clip does not flicker) is mapped to inverse depths 1..1/FAR_RATIO."""
    low, high = np.percentile(disparity, [2, 98])
    span = high - low if high > low else 1.0
    unit = np.clip((disparity - low) / span, 0.0, 1.0)  # 1 = near
    return (1.0 / (1.0 / FAR_RATIO + unit * (1.0 - 1.0 / FAR_RATIO))).astype(np.float32)


def fit_depth(depth: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resize [H, W] or [F, H, W] depth to cover width×height keeping its aspect and centre-crop, exactly as
    `avctl.media.fit_to_bucket` fits frames, but nearest-neighbour so no depth is invented across edges."""
    frames = depth[None] if depth.ndim == 2 else depth
    src_h, src_w = frames.shape[1:3]
    scale = max(width / src_w, height / src_h)
    new_w, new_h = max(width, round(src_w * scale)), max(height, round(src_h * scale))
    top, left = (new_h - height) // 2, (new_w - width) // 2
    out = np.stack([cv2.resize(f.astype(np.float32), (new_w, new_h), interpolation=cv2.INTER_NEAREST)
                    [top : top + height, left : left + width] for f in frames])
    return out[0] if depth.ndim == 2 else out


def load_depth(path: str | Path) -> np.ndarray:
    """A user depth file → z-depth, [H, W] or [F, H, W] float32 (any scale: it is normalised to the subject unless
    the trajectory says "translation_unit": "depth"). Formats: `.npy` float z-depth (larger = farther; read without
    pickle); a grey image (8- or 16-bit PNG) or video in the depth modality's convention (near = white), i.e.
    relative inverse depth, converted with `disparity_to_depth`."""
    from avctl.media import is_image, read_video

    path = Path(path)
    if not path.is_file():
        raise BadInput(f"{path}: depth file not found")
    if path.suffix.lower() == ".npy":
        try:
            depth = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise BadInput(f"{path}: not a readable .npy array ({exc})") from exc
        if depth.ndim not in (2, 3) or not np.issubdtype(depth.dtype, np.number):
            raise BadInput(f"{path}: depth must be a numeric [H, W] or [F, H, W] array, got {depth.dtype} "
                           f"{list(depth.shape)}")
        depth = depth.astype(np.float32)
        if not np.isfinite(depth).any() or np.nanmax(depth) <= 0:
            raise BadInput(f"{path}: depth has no positive values; .npy depth is z-distance (larger = farther)")
        return depth
    if is_image(path):
        img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if img is None:
            raise BadInput(f"{path}: not a readable depth image; give a grey PNG (near = white) or a .npy")
        grey = img if img.ndim == 2 else cv2.cvtColor(img[..., :3], cv2.COLOR_BGR2GRAY)
        return disparity_to_depth(grey.astype(np.float32))
    frames = read_video(path).frames  # a depth video as the depth modality renders it
    return disparity_to_depth(frames[..., 0].astype(np.float32))


def estimate_depth(frames: np.ndarray, weights: Path | str | None = None, backend: str | None = None,
                   extractor: Any = None) -> np.ndarray:
    """z-depth [F, H, W] from the monocular depth model (`avctl.depth_model`, Depth-Anything-V2; MissingWeights when
    absent), one disparity→depth mapping for the whole clip. Pass a loaded `extractor` to reuse it."""
    from avctl.depth_model import load_depth_model

    model = extractor if extractor is not None else load_depth_model(weights=weights, backend=backend)
    return disparity_to_depth(model.predict(frames))


# --------------------------------------------------------------------------------------------- control renders
def _scene_depth(depth: np.ndarray, unit: str) -> np.ndarray:
    return normalise_depth(depth) if unit == "subject" else depth.astype(np.float32)


def render_image(image: np.ndarray, depth: np.ndarray, trajectory: Trajectory, size: tuple[int, int],
                 device: str | torch.device = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """camera-image's canonical grid: `image` [H, W, 3] uint8 with z-depth [H, W] (same size) is the view of
    trajectory frame 0; render it from every trajectory camera at `size` (h, w). Returns (frames [F, h, w, 3] uint8
    with holes #66FF00, holes [F, h, w] bool)."""
    rel = trajectory.relative_to_first()
    return render_views(image, _scene_depth(depth, trajectory.unit), float(rel.fov[0]), rel.rotations,
                        rel.translations, rel.fov, size, device)


def camera_control(image: np.ndarray, trajectory: Trajectory, depth: np.ndarray, size: tuple[int, int],
                   device: str | torch.device = "cpu") -> np.ndarray:
    """The camera-image control for generation: `image` [H, W, 3] uint8 (any size; it and `depth` [H, W] are
    fitted to the reference aspect as the first-frame image is) rendered along `trajectory` at the reference
    `size` (h, w) = output ÷ 4. The point cloud is kept at 2× the reference size at most. Returns [F, h, w, 3]
    uint8, holes #66FF00."""
    from avctl.media import fit_to_bucket

    height, width = size
    if depth.ndim == 3:
        depth = depth[0]
    scale = min(2.0, max(image.shape[0] / height, image.shape[1] / width))
    cloud_w, cloud_h = max(width, round(width * scale)), max(height, round(height * scale))
    fitted = fit_to_bucket(np.asarray(image, dtype=np.uint8)[None], cloud_w, cloud_h)[0]
    return render_image(fitted, fit_depth(depth, cloud_w, cloud_h), trajectory, size, device)[0]


def rerender_video(frames: np.ndarray, depth: np.ndarray, trajectory: Trajectory, size: tuple[int, int],
                   source_fov: float = DEFAULT_FOV, source_frames: Sequence[int] | None = None,
                   device: str | torch.device = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """camera-video's reference: each source frame [F, H, W, 3] with its z-depth [F, H, W] re-rendered as a point
    cloud from the target camera of the same output frame (world = the source camera, vertical `source_fov`).
    `source_frames` retimes: output frame i shows source frame `source_frames[i]` (default: i). One subject
    normalisation for the whole clip (frame 0's), unless the trajectory is in depth units. Returns (frames
    [len(trajectory), h, w, 3] uint8 with holes #66FF00, holes bool)."""
    if depth.shape != frames.shape[:3]:
        raise BadInput(f"per-frame depth {list(depth.shape)} does not match the frames {list(frames.shape[:3])}")
    times = list(source_frames) if source_frames is not None else list(range(len(trajectory)))
    if len(times) != len(trajectory):
        raise BadInput(f"retiming gives {len(times)} source frames for a {len(trajectory)}-camera trajectory")
    if any(not 0 <= t < len(frames) for t in times):
        raise BadInput(f"retiming names frames outside the source's 0..{len(frames) - 1}")
    scene = _scene_depth(depth, trajectory.unit)
    out = np.empty((len(times), *size, 3), dtype=np.uint8)
    holes = np.empty((len(times), *size), dtype=bool)
    for i, t in enumerate(times):
        out[i : i + 1], holes[i : i + 1] = render_views(
            frames[t], scene[t], source_fov, trajectory.rotations[i : i + 1], trajectory.translations[i : i + 1],
            trajectory.fov[i : i + 1], size, device)
    return out, holes


def camera_video_control(frames: np.ndarray, trajectory: Trajectory, depth: np.ndarray, size: tuple[int, int],
                         source_fov: float = DEFAULT_FOV, source_frames: Sequence[int] | None = None,
                         device: str | torch.device = "cpu") -> np.ndarray:
    """`rerender_video` for generation: frames and depth are fitted to the output aspect first (as `--from-video`
    frames are); returns [F, h, w, 3] uint8, holes #66FF00 (camera-video uses a 1× canvas: `size` = output size)."""
    from avctl.media import fit_to_bucket

    height, width = size
    fitted = fit_to_bucket(np.asarray(frames, dtype=np.uint8), width, height)
    return rerender_video(fitted, fit_depth(depth, width, height), trajectory, size, source_fov, source_frames,
                          device)[0]


def depth_for(frames: np.ndarray, depth: str | Path | None = None, weights: Path | str | None = None) -> np.ndarray:
    """z-depth for `frames` [F, H, W, 3] (one image: F = 1): the `--depth` file when given ([H, W] is used for
    every frame), else the depth model (`avctl.depth_model`). Without either: MissingWeights naming both ways out."""
    if depth is not None:
        found = load_depth(depth)
        if found.ndim == 3 and len(found) < len(frames):
            raise BadInput(f"{depth}: depth for {len(found)} frames, the video has {len(frames)}")
        return found if found.ndim == 3 else np.repeat(found[None], len(frames), axis=0)
    try:
        return estimate_depth(frames, weights=weights)
    except MissingWeights as exc:
        raise MissingWeights(f"camera control needs depth: pass --depth PATH (.npy z-depth, or a grey image/video "
                             f"with near = white), or make the depth model available ({exc})") from exc


def camera_image_control(image: np.ndarray, camera: str, frames: int, size: tuple[int, int],
                         depth: str | Path | None = None, weights: Path | str | None = None,
                         fov: float = DEFAULT_FOV, device: str | torch.device = "cpu") -> tuple[np.ndarray, Trajectory]:
    """`avctl generate --camera CAMERA [--depth PATH] --image IMAGE` for a camera-image LoRA: the trajectory
    (`resolve_camera`: PRESET[@STRENGTH] or a .json with `frames` cameras; presets start at `fov`), the image's depth
    (`depth_for`) and the control at the reference `size` (h, w) = output ÷ 4. Returns (control [F, h, w, 3] uint8,
    trajectory)."""
    trajectory = resolve_camera(camera, frames, fov)
    z = depth_for(np.asarray(image)[None], depth, weights)[0]
    return camera_control(image, trajectory, z, size, device), trajectory


def camera_video_control_for(source: np.ndarray, camera: str, size: tuple[int, int], depth: str | Path | None = None,
                             weights: Path | str | None = None, source_fov: float = DEFAULT_FOV,
                             source_frames: Sequence[int] | None = None,
                             device: str | torch.device = "cpu") -> tuple[np.ndarray, Trajectory]:
    """`avctl generate --from-video SOURCE --camera CAMERA [--depth PATH]` for a camera-video LoRA: per-frame depth
    of the source (`depth_for`), then each output frame re-rendered from the trajectory's camera at the output
    `size` (h, w) (1× canvas). The trajectory has one camera per frame of `source` (already cut to the output's frame
    count) or of `source_frames` when retiming. Returns (control [F, h, w, 3] uint8, trajectory)."""
    count = len(source_frames) if source_frames is not None else len(source)
    trajectory = resolve_camera(camera, count, source_fov)
    z = depth_for(source, depth, weights)
    return camera_video_control(source, trajectory, z[: len(source)], size, source_fov, source_frames,
                                device), trajectory


# --------------------------------------------------------------------------------------- camera estimation (OpenCV)
def _track(frames: np.ndarray, max_tracks: int) -> tuple[np.ndarray, np.ndarray]:
    """Points [N, F, 2] and visibility [N, F] of the tracks that start on frame 0 (`avctl.tracking`'s LK)."""
    from avctl.tracking import track_points

    tracks = track_points(frames, max_tracks=max_tracks)
    first = tracks.visible[:, 0] if len(tracks.points) else np.zeros(0, dtype=bool)
    return tracks.points[first], tracks.visible[first]


def _clear_of_holes(frame: np.ndarray, points: np.ndarray, radius: int = 6) -> np.ndarray:
    """[n] bool: the points [n, 2] lie at least `radius` px from any #66FF00 pixel of `frame`. A track beside a hole
    slides along its edge, consistently enough to pass as an inlier, so renders' holes must not be tracked."""
    hole = np.all(np.abs(frame.astype(np.int16) - np.array(HOLE_COLOUR, np.int16)) <= 8, axis=-1)
    if not hole.any():
        return np.ones(len(points), dtype=bool)
    distance = cv2.distanceTransform((~hole).astype(np.uint8), cv2.DIST_L2, 3)
    height, width = hole.shape
    cols = np.clip(np.round(points[:, 0]).astype(int), 0, width - 1)
    rows = np.clip(np.round(points[:, 1]).astype(int), 0, height - 1)
    return distance[rows, cols] >= radius


ESTIMATE_QUALITY = 0.001  # Shi-Tomasi floor, relative to the strongest corner of each grid cell
ESTIMATE_GRID = 4  # corners are seeded per cell of a 4×4 grid, so one textured region cannot take them all
FB_LIMIT = 0.5  # px: forward-backward LK round trip above which a match is dropped
MODEL_NOISE = 0.3  # px: LK's typical error on a good track, the unit of the model-choice cost
TRUNCATE_AT = 2.0  # px: a match further off than this is an outlier, whichever model
PNP_COST_RATIO = 0.7  # PnP is chosen when its cost is below this share of rotation + zoom's
REANCHOR_BELOW = 0.5  # re-seed the anchor frame when fewer than this share of its corners are still tracked


def _seed_corners(grey: np.ndarray, count: int) -> np.ndarray:
    """Up to `count` Shi-Tomasi corners [n, 2] float32 spread over a grid (each cell's own quality floor)."""
    height, width = grey.shape
    margin = 2
    distance = max(2, min(height, width) // 40)
    per_cell = max(4, count // ESTIMATE_GRID ** 2)
    found = []
    for i in range(ESTIMATE_GRID):
        for j in range(ESTIMATE_GRID):
            mask = np.zeros_like(grey)
            y0, y1 = max(margin, height * i // ESTIMATE_GRID), min(height - margin, height * (i + 1) // ESTIMATE_GRID)
            x0, x1 = max(margin, width * j // ESTIMATE_GRID), min(width - margin, width * (j + 1) // ESTIMATE_GRID)
            mask[y0:y1, x0:x1] = 255
            corners = cv2.goodFeaturesToTrack(grey, per_cell, ESTIMATE_QUALITY, distance, mask=mask, blockSize=5)
            if corners is not None:
                found.append(corners.reshape(-1, 2))
    return np.concatenate(found).astype(np.float32) if found else np.zeros((0, 2), np.float32)


def _flow(grey0: np.ndarray, grey1: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """LK from grey0 to grey1 with a forward-backward check: (moved [n, 2], kept [n] bool)."""
    if not len(points):
        return points, np.zeros(0, dtype=bool)
    # small windows: on small frames a wide one straddles a moving object's strong edges and drags the point along
    window = int(np.clip(min(grey0.shape) // 8 | 1, 7, 21))
    params = {"winSize": (window, window), "maxLevel": 3,
              "criteria": (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 30, 0.01)}
    start = points.reshape(-1, 1, 2).astype(np.float32)
    moved, ok, _ = cv2.calcOpticalFlowPyrLK(grey0, grey1, start, None, **params)
    back, ok_back, _ = cv2.calcOpticalFlowPyrLK(grey1, grey0, moved, None, **params)
    moved, back = moved.reshape(-1, 2), back.reshape(-1, 2)
    height, width = grey0.shape
    inside = (moved[:, 0] >= 0) & (moved[:, 0] <= width - 1) & (moved[:, 1] >= 0) & (moved[:, 1] <= height - 1)
    kept = ok.reshape(-1).astype(bool) & ok_back.reshape(-1).astype(bool) & inside
    kept &= np.linalg.norm(back - points.reshape(-1, 2), axis=1) <= FB_LIMIT
    return moved, kept


def _bearings(points: np.ndarray, focal: float, centre: tuple[float, float]) -> np.ndarray:
    rays = np.c_[(points[:, 0] - centre[0]) / focal, (points[:, 1] - centre[1]) / focal, np.ones(len(points))]
    return rays / np.linalg.norm(rays, axis=1, keepdims=True)


def _rotation_zoom(p0: np.ndarray, p1: np.ndarray, focal: float, centre: tuple[float, float],
                   min_points: int) -> tuple[np.ndarray, float, np.ndarray] | None:
    """Camera rotation and zoom between two views from matched pixels [n, 2]: x₁ ≈ K₁ R K₀⁻¹ x₀ with K₀'s `focal`
    known and K₁'s focal = zoom · focal. A robust homography picks the inliers (moving objects are outliers) and its
    linear part gives the zoom; the rotation is the best one between the inliers' bearing vectors. Returns (R camera
    0 → camera 1 coordinates, zoom, residual [n] px of every match) or None when no model has `min_points`
    inliers."""
    h, mask = None, None
    for robust in (getattr(cv2, "USAC_MAGSAC", cv2.RANSAC), cv2.RANSAC):  # MAGSAC++ gives up on a few
        try:
            h, mask = cv2.findHomography(p0.astype(np.float64), p1.astype(np.float64), robust, 1.0)
        except cv2.error:
            continue
        if h is not None and mask is not None and int(mask.sum()) >= min_points:
            break
    if h is None or mask is None or int(mask.sum()) < min_points:
        return None
    k = np.array([[focal, 0.0, centre[0]], [0.0, focal, centre[1]], [0.0, 0.0, 1.0]])
    a = np.linalg.inv(k) @ h @ k  # ∝ diag(zoom, zoom, 1) R
    zoom = float((np.linalg.norm(a[0]) + np.linalg.norm(a[1])) / (2.0 * np.linalg.norm(a[2])))
    inliers = mask.reshape(-1) > 0
    b0 = _bearings(p0, focal, centre)
    seen = (p1 - np.array(centre)) / focal  # frame 1's points at frame 0's focal
    for _ in range(3):  # the homography has 8 degrees of freedom, the camera 4: refit on the camera model's inliers
        rotation = _kabsch(b0[inliers], _bearings(p1[inliers], zoom * focal, centre))
        mapped = b0 @ rotation.T
        unit = mapped[:, :2] / np.maximum(mapped[:, 2:], 1e-9)  # where the rotation alone puts them, focal 1
        zoom = float((unit[inliers] * seen[inliers]).sum() / max((unit[inliers] ** 2).sum(), 1e-12))
        residual = np.linalg.norm(zoom * focal * unit + np.array(centre) - p1, axis=1)
        if int((residual <= 1.5).sum()) < min_points:
            break
        inliers = residual <= 1.5
    return rotation, zoom, residual


def _model_cost(residual: np.ndarray, parameters: int) -> float:
    """A robust information criterion for one frame's fit: truncated squared residuals in units of the tracking
    noise (MODEL_NOISE px; an outlier costs as much as a TRUNCATE_AT-px miss) plus ln(n) per free parameter (BIC),
    so a model with more parameters must buy them with a clearly better fit."""
    clipped = np.minimum((residual / MODEL_NOISE) ** 2, (TRUNCATE_AT / MODEL_NOISE) ** 2)
    return float(clipped.sum() + parameters * math.log(max(len(residual), 2)))


def _pnp(points: np.ndarray, visible: np.ndarray, depth: np.ndarray, k: np.ndarray,
         min_points: int) -> tuple[list[np.ndarray], list[np.ndarray], float] | None:
    """Cameras from frame 0's tracks [n, F, 2] lifted with its z-depth: PnP + RANSAC per frame. Returns (rotations,
    centres, cost: `_model_cost` summed over frames) or None where some frame has no consistent pose."""
    height, width = depth.shape
    start = points[:, 0]
    cols = np.clip(np.round(start[:, 0]).astype(int), 0, width - 1)
    rows = np.clip(np.round(start[:, 1]).astype(int), 0, height - 1)
    z = depth[rows, cols].astype(np.float64)
    world = np.stack([(start[:, 0] - k[0, 2]) / k[0, 0] * z, (start[:, 1] - k[1, 2]) / k[1, 1] * z, z], axis=1)
    rotations, centres, cost = [np.eye(3)], [np.zeros(3)], 0.0
    rvec, tvec = np.zeros((3, 1)), np.zeros((3, 1))
    for t in range(1, points.shape[1]):
        seen = visible[:, t]
        if seen.sum() < min_points:
            return None
        ok, rvec, tvec, inliers = cv2.solvePnPRansac(
            world[seen], points[seen, t].astype(np.float64), k, None, rvec=rvec.copy(), tvec=tvec.copy(),
            useExtrinsicGuess=t > 1, reprojectionError=1.0, iterationsCount=200, flags=cv2.SOLVEPNP_ITERATIVE)
        if not ok or inliers is None or len(inliers) < min_points:
            return None
        inl = inliers.reshape(-1)
        rvec, tvec = cv2.solvePnPRefineLM(world[seen][inl], points[seen, t][inl].astype(np.float64), k, None, rvec,
                                          tvec)
        projected = cv2.projectPoints(world[seen], rvec, tvec, k, None)[0].reshape(-1, 2)
        cost += _model_cost(np.linalg.norm(projected - points[seen, t], axis=1), 6)
        world_to_cam = cv2.Rodrigues(rvec)[0]
        rotations.append(world_to_cam.T)
        centres.append((-world_to_cam.T @ tvec).reshape(3))
    return rotations, centres, cost


def estimate_trajectory(frames: np.ndarray, depth: np.ndarray | None = None, fov: float = DEFAULT_FOV,
                        min_points: int = 8, max_tracks: int = 256) -> Trajectory:
    """Cameras of a real clip [F, H, W, 3] relative to frame 0, whose vertical FOV is `fov`.

    Dense corners (a grid of Shi-Tomasi seeds, low quality floor) are tracked with forward-backward-checked LK from
    an anchor frame, re-seeded when half are lost. Two models compete over the frames tracked from frame 0:
    rotation + zoom (a robust homography per frame against its anchor: pans, tilts, zooms, any depth; FOV follows
    the zoom) and, when frame 0's z-depth [H, W] is given, PnP + RANSAC on the tracks lifted with it (translation
    in subject units, constant FOV). PnP wins only when it fits clearly better by a robust information criterion
    (`_model_cost` below PNP_COST_RATIO of rotation's): without parallax a sideways move and a pan look alike.
    BadInput (one line) when fewer
    than `min_points` matches fit some frame (give a <clip>.camera.json)."""
    count, height, width = frames.shape[:3]
    greys = [cv2.cvtColor(np.ascontiguousarray(f), cv2.COLOR_RGB2GRAY) for f in frames]
    centre = ((width - 1) / 2.0, (height - 1) / 2.0)
    focal0 = focal_from_fov(fov, height)
    rotations, focals = [np.eye(3)], [focal0]
    anchor, seeds = 0, _seed_corners(greys[0], max_tracks)
    seeds = seeds[_clear_of_holes(frames[0], seeds)]
    if len(seeds) < min_points:
        raise BadInput(f"only {len(seeds)} trackable points on frame 0 (need {min_points}) to estimate the camera; "
                       f"give a <clip>{CAMERA_SUFFIX}")
    track = np.zeros((len(seeds), count, 2), np.float32)  # frame 0's corners, for PnP
    track[:, 0] = seeds
    on = np.zeros((len(seeds), count), dtype=bool)
    on[:, 0] = True
    current, alive = seeds.copy(), np.ones(len(seeds), dtype=bool)
    rotation_cost, rotation_from_zero = 0.0, True
    for t in range(1, count):
        if alive.sum() < max(min_points, REANCHOR_BELOW * len(seeds)) and anchor < t - 1:
            anchor, seeds = t - 1, _seed_corners(greys[t - 1], max_tracks)
            seeds = seeds[_clear_of_holes(frames[t - 1], seeds)]
            current, alive = seeds.copy(), np.ones(len(seeds), dtype=bool)
        moved, kept = _flow(greys[t - 1], greys[t], current[alive])
        index = np.flatnonzero(alive)
        current[index[kept]] = moved[kept]
        alive[index[~kept]] = False
        alive[alive] = _clear_of_holes(frames[t], current[alive])
        if anchor == 0:
            track[alive, t], on[alive, t] = current[alive], True
        if alive.sum() < min_points:
            raise BadInput(f"camera estimate lost at frame {t}: {int(alive.sum())} points tracked (need "
                           f"{min_points}); give a <clip>{CAMERA_SUFFIX}")
        fit = _rotation_zoom(seeds[alive], current[alive], focals[anchor], centre, min_points)
        if fit is None:
            raise BadInput(f"camera estimate failed at frame {t}: no rotation fits {int(alive.sum())} tracked "
                           f"points; give a <clip>{CAMERA_SUFFIX}")
        relative, zoom, residual = fit
        rotations.append(rotations[anchor] @ relative.T)
        focals.append(zoom * focals[anchor])
        rotation_cost += _model_cost(residual, 4)
        rotation_from_zero &= anchor == 0
    fovs = np.degrees(2.0 * np.arctan(height / 2.0 / np.array(focals)))
    if depth is not None and rotation_from_zero and count > 1:
        found = _pnp(track, on, normalise_depth(depth), intrinsics(fov, height, width), min_points)
        # without parallax (a distant plane, a flat wall) a sideways move and a pan look alike and PnP's two extra
        # parameters per frame buy it a little anyway: it must fit clearly better
        if found is not None and found[2] < PNP_COST_RATIO * rotation_cost:
            return Trajectory(np.array(found[0]), np.array(found[1]), np.full(count, fov),
                              name="opencv-pnp estimate")
    return Trajectory(np.array(rotations), np.zeros((count, 3)), fovs, name="opencv rotation + zoom estimate")


def _angle(rotation: np.ndarray) -> float:
    """The rotation angle of a 3×3 rotation, degrees."""
    return math.degrees(math.acos(float(np.clip((np.trace(rotation) - 1.0) / 2.0, -1.0, 1.0))))


def _kabsch(b0: np.ndarray, b1: np.ndarray) -> np.ndarray:
    """The rotation R minimising Σ |b1 − R b0|² over unit bearing vectors [N, 3]."""
    u, _, vt = np.linalg.svd(b1.T @ b0)
    return u @ np.diag([1.0, 1.0, np.sign(np.linalg.det(u @ vt))]) @ vt


def relative_rotation(p0: np.ndarray, p1: np.ndarray, k0: np.ndarray, k1: np.ndarray) -> tuple[np.ndarray, str]:
    """The rotation R with x₁ ≈ R x₀ (camera-0 coordinates → camera-1 coordinates) from matched pixels [N, 2].

    Two models compete: a pure rotation (homography RANSAC for the inliers, then the best rotation of their bearing
    vectors) and the essential matrix (`_best_essential`). The rotation is kept when it explains, within
    1 px, at least ROTATION_ONLY_SUPPORT (95 %) as many matches as the essential matrix does: with little or no
    translation the essential matrix is degenerate and its rotation arbitrary. Returns (R, "rotation" | "essential")."""
    n0 = cv2.undistortPoints(p0.reshape(-1, 1, 2).astype(np.float64), k0, None).reshape(-1, 2)
    n1 = cv2.undistortPoints(p1.reshape(-1, 1, 2).astype(np.float64), k1, None).reshape(-1, 2)
    pixel = 1.0 / float(k1[1, 1])  # one pixel in normalised units
    # MAGSAC++ (OpenCV ≥ 4.5) with its local optimisation is far steadier than plain RANSAC on a few dozen tracks
    robust = getattr(cv2, "USAC_MAGSAC", cv2.RANSAC)
    b0 = np.c_[n0, np.ones(len(n0))]
    b0 /= np.linalg.norm(b0, axis=1, keepdims=True)
    b1 = np.c_[n1, np.ones(len(n1))]
    b1 /= np.linalg.norm(b1, axis=1, keepdims=True)
    rotation, rotation_support = None, 0
    h, hmask = cv2.findHomography(n0, n1, robust, 2.0 * pixel)
    if h is not None and hmask is not None and hmask.sum() >= 3:
        rotation = _kabsch(b0[hmask.reshape(-1) > 0], b1[hmask.reshape(-1) > 0])
        mapped = b0 @ rotation.T
        residual = np.linalg.norm(mapped[:, :2] / np.maximum(mapped[:, 2:], 1e-9) - n1, axis=1) / pixel
        rotation_support = int((residual <= 1.0).sum())
    best = _best_essential(n0, n1, pixel)
    if best is None:
        if rotation is None:
            raise BadInput("neither a rotation nor an essential matrix fits the tracks")
        return rotation, "rotation"
    rot, support = best
    if rotation is not None and rotation_support >= ROTATION_ONLY_SUPPORT * support:
        return rotation, "rotation"
    return rot, "essential"


def _skew(v: np.ndarray) -> np.ndarray:
    return np.array([[0.0, -v[2], v[1]], [v[2], 0.0, -v[0]], [-v[1], v[0], 0.0]])


def _best_essential(n0: np.ndarray, n1: np.ndarray, pixel: float) -> tuple[np.ndarray, int] | None:
    """(R, inlier count) of the essential matrix that fits normalised matches best. Lateral motion over few depth
    layers leaves a family of essential matrices that all fit within a pixel (every match only says "same row"),
    and one robust estimator's pick among them can be far off; so the poses of several estimators (MAGSAC++,
    RANSAC, LMedS) compete on the mean Sampson error, truncated at 2 px, over all matches."""
    candidates = []
    methods = [getattr(cv2, name) for name in ("USAC_MAGSAC", "RANSAC", "LMEDS") if hasattr(cv2, name)]
    for method in methods:
        try:
            e, mask = cv2.findEssentialMat(n0, n1, np.eye(3), method=method, prob=0.999, threshold=pixel)
        except cv2.error:
            continue
        if e is None or mask is None:
            continue
        for k in range(0, e.shape[0] - e.shape[0] % 3, 3):  # the 5-point solver may return several
            _, rot, trans, _ = cv2.recoverPose(e[k : k + 3], n0, n1, np.eye(3), mask=mask.copy())
            candidates.append((rot, trans.reshape(3)))
    if not candidates:
        return None
    a, b = np.c_[n0, np.ones(len(n0))], np.c_[n1, np.ones(len(n1))]
    scored = []
    for rot, trans in candidates:
        ess = _skew(trans) @ rot
        ea, eb = a @ ess.T, b @ ess
        sampson = np.sum(b * ea, axis=1) ** 2 / np.maximum(ea[:, 0] ** 2 + ea[:, 1] ** 2 + eb[:, 0] ** 2
                                                          + eb[:, 1] ** 2, 1e-30)
        distance = np.sqrt(sampson) / pixel
        scored.append((float(np.mean(np.minimum(distance, 2.0) ** 2)), int((distance <= 1.0).sum()), rot))
    _, support, rot = min(scored, key=lambda item: item[0])
    return rot, support


def rotation_error(trajectory: Trajectory, frames: np.ndarray, min_points: int = 8,
                   max_tracks: int = 256) -> dict[str, Any]:
    """Camera accuracy of a generated video [F, H, W, 3] against the requested `trajectory`: the camera rotation
    from frame 0 to each frame is re-estimated (LK tracks from frame 0; homography or essential matrix, intrinsics
    from the trajectory's per-frame FOV) and compared with the requested one. Returns {"rotation_error_deg" (mean
    over estimated frames), "rotation_error_sum_deg", "rotation_error_max_deg", "per_frame_deg" (None where the
    estimate failed), "estimated_rotation_deg" (the estimated angle
    from frame 0 per frame), "frames_estimated", "frames_failed", "method"}; "rotation_error_deg" is None and "reason"
    says why when no frame could be estimated."""
    if len(frames) != len(trajectory):
        raise BadInput(f"the video has {len(frames)} frames, the trajectory {len(trajectory)} cameras")
    height, width = frames.shape[1:3]
    points, visible = _track(frames, max_tracks)
    rel = trajectory.relative_to_first()
    k0 = intrinsics(float(rel.fov[0]), height, width)
    per_frame: list[float | None] = [0.0]
    estimated: list[float | None] = [0.0]
    methods: set[str] = set()
    reasons: list[str] = []
    for t in range(1, len(frames)):
        seen = visible[:, t].copy() if len(points) else np.zeros(0, dtype=bool)
        seen[seen] = _clear_of_holes(frames[t], points[seen, t])
        if seen.sum() < min_points:
            per_frame.append(None)
            estimated.append(None)
            reasons.append(f"frame {t}: {int(seen.sum())} tracked points")
            continue
        try:
            est, method = relative_rotation(points[seen, 0], points[seen, t], k0,
                                            intrinsics(float(rel.fov[t]), height, width))
        except (BadInput, cv2.error) as exc:
            per_frame.append(None)
            estimated.append(None)
            reasons.append(f"frame {t}: {exc}")
            continue
        methods.add(method)
        requested = rel.rotations[t].T  # camera-0 coordinates → camera-t coordinates
        per_frame.append(_angle(est.T @ requested))
        estimated.append(_angle(est))
    done = [e for e in per_frame[1:] if e is not None]
    result: dict[str, Any] = {
        "rotation_error_deg": float(np.mean(done)) if done else None,
        "rotation_error_sum_deg": float(np.sum(done)) if done else None,
        "rotation_error_max_deg": float(np.max(done)) if done else None,
        "per_frame_deg": per_frame,
        "estimated_rotation_deg": estimated,  # how far each frame turned from frame 0, as estimated
        "frames_estimated": len(done),
        "frames_failed": len(per_frame) - 1 - len(done),
        "method": "opencv LK tracks + " + "/".join(sorted(methods) or ["rotation/essential"])
                  + " (intrinsics from the trajectory's FOV)",
    }
    if not done and len(frames) > 1:
        result["reason"] = "no frame could be estimated (" + "; ".join(reasons[:3]) + ")"
    return result


def rotate_image(image: np.ndarray, trajectory: Trajectory, size: tuple[int, int]) -> np.ndarray:
    """Views [F, h, w, 3] of a photo taken as infinitely far away (no parallax), seen by the trajectory's cameras
    (rotation and FOV; translations are ignored): each view is an exact homography of the photo, whose centre is the
    optical axis of frame 0 and whose pixels are at frame 0's focal length. A synthetic pan, tilt or zoom of a real
    image with a known camera, for testing camera estimation."""
    height, width = size
    rel = trajectory.relative_to_first()
    focal0 = focal_from_fov(float(rel.fov[0]), height)
    src_h, src_w = image.shape[:2]
    source = np.array([[focal0, 0.0, (src_w - 1) / 2.0], [0.0, focal0, (src_h - 1) / 2.0], [0.0, 0.0, 1.0]])
    views = []
    for rotation, fov in zip(rel.rotations, rel.fov, strict=True):
        k = intrinsics(float(fov), height, width)
        to_photo = source @ rotation @ np.linalg.inv(k)  # view pixel → ray in frame 0's camera → photo pixel
        views.append(cv2.warpPerspective(image, to_photo, (width, height),
                                         flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REFLECT))
    return np.stack(views)


STILL_DEG_PER_S = 2.0  # a camera turning slower than this is "static" for pan recovery
PAN_DIRECTION_TOLERANCE = 20.0  # degrees
PAN_SPEED_TOLERANCE = 0.25  # relative


def pan_rate(trajectory: Trajectory, fps: float) -> tuple[float, float]:
    """(yaw, pitch) rates in °/s (yaw > 0 turns right, pitch > 0 turns down) of where the camera looks, relative to
    frame 0: least squares through the origin over all frames, so one bad frame does not decide it."""
    rel = trajectory.relative_to_first()
    look = rel.rotations[:, :, 2]  # the optical axis in frame 0's camera coordinates
    yaw = np.degrees(np.arctan2(look[:, 0], look[:, 2]))
    pitch = np.degrees(np.arctan2(look[:, 1], np.hypot(look[:, 0], look[:, 2])))
    t = np.arange(len(rel)) / fps
    norm = float((t * t).sum())
    if norm == 0.0:
        return 0.0, 0.0
    return float((t * yaw).sum() / norm), float((t * pitch).sum() / norm)


def score_camera(estimate: Trajectory, truth: Trajectory, fps: float) -> dict[str, Any]:
    """An estimated camera against the true one (same frame count; both taken relative to their frame 0).

    Returns rotation_error_deg / rotation_error_max_deg (angle of R_estᵀ R_true per frame, mean and max over frames
    1…), translation_direction_error_deg (angle between the final camera displacements; None unless the truth
    translates; 90 when the estimate does not move), fov_error_deg (mean |FOV_est − FOV_true|; None unless the truth
    zooms), and pan recovery: true and estimated (yaw, pitch) rates (`pan_rate`), the direction error, the speed
    ratio, and pan_recovered — direction within PAN_DIRECTION_TOLERANCE° and speed within PAN_SPEED_TOLERANCE of the
    truth, or both slower than STILL_DEG_PER_S when the truth does not turn."""
    if len(estimate) != len(truth):
        raise BadInput(f"the estimate has {len(estimate)} cameras, the truth {len(truth)}")
    est, true = estimate.relative_to_first(), truth.relative_to_first()
    per_frame = [_angle(a.T @ b) for a, b in zip(est.rotations[1:], true.rotations[1:], strict=True)]
    moved = true.translations[-1]
    translation_error = None
    if np.linalg.norm(moved) > 1e-9:
        guess = est.translations[-1]
        size = float(np.linalg.norm(guess) * np.linalg.norm(moved))
        translation_error = 90.0 if size < 1e-12 else math.degrees(
            math.acos(float(np.clip(guess @ moved / size, -1.0, 1.0))))
    zooms = float(true.fov.max() - true.fov.min()) > 0.5
    true_rate, est_rate = np.array(pan_rate(truth, fps)), np.array(pan_rate(estimate, fps))
    true_speed, est_speed = float(np.linalg.norm(true_rate)), float(np.linalg.norm(est_rate))
    if true_speed < STILL_DEG_PER_S:
        direction_error, ratio = None, None
        recovered = est_speed < STILL_DEG_PER_S
    else:
        cos = float(true_rate @ est_rate) / max(true_speed * est_speed, 1e-12)
        direction_error = math.degrees(math.acos(float(np.clip(cos, -1.0, 1.0)))) if est_speed > 0 else 180.0
        ratio = est_speed / true_speed
        recovered = direction_error <= PAN_DIRECTION_TOLERANCE and abs(ratio - 1.0) <= PAN_SPEED_TOLERANCE
    return {
        "rotation_error_deg": float(np.mean(per_frame)) if per_frame else 0.0,
        "rotation_error_max_deg": float(np.max(per_frame)) if per_frame else 0.0,
        "translation_direction_error_deg": translation_error,
        "fov_error_deg": float(np.mean(np.abs(est.fov - true.fov))) if zooms else None,
        "true_pan_deg_s": true_rate.tolist(),
        "estimated_pan_deg_s": est_rate.tolist(),
        "pan_direction_error_deg": direction_error,
        "pan_speed_ratio": ratio,
        "pan_recovered": bool(recovered),
    }


def sidecar(video: str | Path, suffix: str) -> Path:
    """The per-clip sidecar next to a video: `clip.mp4` → `clip<suffix>` (e.g. clip.camera.json)."""
    video = Path(video)
    return video.with_name(video.stem + suffix)


def clip_cameras(video: str | Path | None, frames: int) -> Trajectory | None:
    """The first `frames` cameras of the `<clip>.camera.json` next to `video`, or None when there is none."""
    path = sidecar(video, CAMERA_SUFFIX) if video else None
    if path is None or not path.is_file():
        return None
    found = load_trajectory(path)
    if len(found) < frames:
        raise BadInput(f"{path.name}: {len(found)} cameras for a {frames}-frame clip; give one per frame")
    return Trajectory(found.rotations[:frames], found.translations[:frames], found.fov[:frames], found.name,
                      found.unit, str(path))


__all__ = [
    "CAMERA_SUFFIX",
    "DEFAULT_FOV",
    "DEPTH_SUFFIX",
    "HOLE_COLOUR",
    "PRESETS",
    "TRAJECTORY_SCHEMA",
    "Trajectory",
    "camera_control",
    "camera_image_control",
    "camera_video_control",
    "camera_video_control_for",
    "clip_cameras",
    "depth_for",
    "describe_presets",
    "disparity_to_depth",
    "estimate_depth",
    "estimate_trajectory",
    "fit_depth",
    "intrinsics",
    "load_depth",
    "load_trajectory",
    "normalise_depth",
    "pan_rate",
    "preset",
    "presets_help",
    "relative_rotation",
    "render_image",
    "render_views",
    "rerender_video",
    "resolve_camera",
    "rotate_image",
    "rotation_error",
    "save_trajectory",
    "score_camera",
    "sidecar",
    "splat",
    "trajectory_from_dict",
    "unproject",
]
