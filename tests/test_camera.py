"""Camera control: trajectories, point-cloud rendering against an analytic scene, the rotation-error metric and the
camera modalities' extractor. The scene is a textured box (a rectangle facing the camera) in front of a textured
background plane, both with exact depth; every expectation is computed independently by ray casting."""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from avctl import camera as C
from avctl.errors import BadInput, BadUsage, MissingWeights
from avctl.modalities.base import Clip

BOX = (-0.225, 0.225, -0.175, 0.175)  # x0, x1, y0, y1 of the box face at depth 1 (the subject)
FOV = 50.0
GREEN = np.array(C.HOLE_COLOUR, dtype=np.uint8)


# ----------------------------------------------------------------------------------------------- analytic scene
def _rays(h: int, w: int, fov: float, rot: np.ndarray) -> np.ndarray:
    k = C.intrinsics(fov, h, w)
    v, u = np.mgrid[0:h, 0:w].astype(float)
    d = np.stack([(u - k[0, 2]) / k[0, 0], (v - k[1, 2]) / k[1, 1], np.ones_like(u)], -1)
    return d @ rot.T  # world directions


def _cast(h: int, w: int, fov: float, rot: np.ndarray, t: np.ndarray, zf: float, zb: float,
          box: tuple[float, ...] = BOX) -> tuple[np.ndarray, np.ndarray]:
    """The world point each pixel centre sees [h, w, 3] and whether it is on the box [h, w] (box ∝ its depth)."""
    b = np.array(box) * zf
    d = _rays(h, w, fov, rot)
    sf = (zf - t[2]) / d[..., 2]
    pf = t + sf[..., None] * d
    on_box = (sf > 0) & (pf[..., 0] >= b[0]) & (pf[..., 0] <= b[1]) & (pf[..., 1] >= b[2]) & (pf[..., 1] <= b[3])
    pb = t + ((zb - t[2]) / d[..., 2])[..., None] * d
    return np.where(on_box[..., None], pf, pb), on_box


def _project(points: np.ndarray, rot: np.ndarray, t: np.ndarray, fov: float, h: int, w: int) -> np.ndarray:
    k = C.intrinsics(fov, h, w)
    cam = (points - t) @ rot
    return np.stack([k[0, 0] * cam[..., 0] / cam[..., 2] + k[0, 2], k[1, 1] * cam[..., 1] / cam[..., 2] + k[1, 2]], -1)


def _scene(h: int, w: int, zf: float = 1.0, zb: float = 2.0, seed: int = 0) -> tuple[np.ndarray, ...]:
    """(image [h, w, 3] uint8 textured in 40..215, z-depth [h, w], world points [h, w, 3], on_box [h, w])."""
    points, on_box = _cast(h, w, FOV, np.eye(3), np.zeros(3), zf, zb)
    rng = np.random.default_rng(seed)
    coarse = rng.integers(40, 216, size=(h // 4 + 1, w // 4 + 1, 3)).astype(np.uint8)
    image = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_LINEAR)
    image[on_box] = image[on_box] // 2 + 100
    return image, points[..., 2].astype(np.float32), points, on_box


def _analytic_holes(h: int, w: int, rot: np.ndarray, t: np.ndarray, fov: float, zf: float,
                    zb: float) -> tuple[np.ndarray, np.ndarray]:
    """(out of the source view, disoccluded) per target pixel: what the source image cannot show."""
    points, on_box = _cast(h, w, fov, rot, t, zf, zb)
    uv = _project(points, np.eye(3), np.zeros(3), FOV, h, w)
    out = (uv[..., 0] < -0.5) | (uv[..., 0] > w - 0.5) | (uv[..., 1] < -0.5) | (uv[..., 1] > h - 0.5)
    b = np.array(BOX) * zf
    xs, ys = points[..., 0] / points[..., 2] * zf, points[..., 1] / points[..., 2] * zf  # source ray at the box
    hidden = ~on_box & (xs >= b[0]) & (xs <= b[1]) & (ys >= b[2]) & (ys <= b[3])
    return out, hidden & ~out


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


# ------------------------------------------------------------------------------------------------- rendering
@pytest.mark.parametrize("spec", ["truck-right", "pan-right@0.5", "tilt-down@0.5", "orbit-right@0.5",
                                  "dolly-in@0.5", "crane-up@0.5"])
def test_render_matches_the_analytic_projection(spec: str) -> None:
    h, w = 48, 64
    _, depth, points, on_box = _scene(h, w)
    cams = C.resolve_camera(spec, 3)
    rot, t, fov = cams.rotations[-1], cams.translations[-1], float(cams.fov[-1])
    cloud, footprint = C.unproject(depth, FOV)
    assert np.allclose(cloud.reshape(h, w, 3), points, atol=1e-9)
    index = C.splat(cloud, footprint, rot, t, fov, (h, w), grid=(h, w))
    seen = index >= 0
    rows, cols = np.nonzero(seen)
    uv = _project(points.reshape(-1, 3)[index[seen]], rot, t, fov, h, w)
    error = np.hypot(uv[:, 0] - cols, uv[:, 1] - rows)
    assert error.max() <= 1.0, f"{spec}: a visible point lands {error.max():.2f} px from its analytic projection"
    # ... and it is the surface the analytic camera sees there (not a hidden one), bar the box's outline
    _, analytic_box = _cast(h, w, fov, rot, t, 1.0, 2.0)
    agree = on_box.reshape(-1)[index[seen]] == analytic_box[seen]
    assert agree.mean() >= 0.97


def test_lateral_translation_holes_are_the_analytic_disocclusion() -> None:
    h, w = 48, 64
    image, depth, _, _ = _scene(h, w)
    cams = C.preset("truck-right", 5, 1.0)
    frames, holes = C.render_image(image, depth, cams, (h, w))
    out, hidden = _analytic_holes(h, w, cams.rotations[-1], cams.translations[-1], FOV, 1.0, 2.0)
    assert hidden.mean() > 0.05 and out.mean() > 0.1  # the test scene does disocclude
    assert _iou(holes[-1] & ~out, hidden) >= 0.95
    assert _iou(holes[-1], out | hidden) >= 0.95
    assert (frames[-1][holes[-1]] == GREEN).all() and not holes[0].any()
    assert np.array_equal(frames[0], image)  # frame 0 is the input image itself


def test_dolly_in_leaves_at_most_one_percent_cracks() -> None:
    h, w = 48, 64
    _, depth, _, _ = _scene(h, w)
    cams = C.preset("dolly-in", 5, 0.8)  # 40 % of the way to the subject: the box grows 1.67×
    cloud, footprint = C.unproject(depth, FOV)
    out, hidden = _analytic_holes(h, w, cams.rotations[-1], cams.translations[-1], FOV, 1.0, 2.0)
    index = C.splat(cloud, footprint, cams.rotations[-1], cams.translations[-1], FOV, (h, w), grid=(h, w))
    cracks = (index < 0) & ~out & ~hidden
    assert cracks.mean() <= 0.01
    # one-pixel points would crack: the footprint is what closes them
    naive = C.splat(cloud, np.full_like(footprint, 1e-9), cams.rotations[-1], cams.translations[-1], FOV, (h, w))
    assert ((naive < 0) & ~out & ~hidden).mean() > 0.2


def _marker_centres(frame: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    """Centroids [n, 2] (x, y) of the blobs of exactly `colour`, left to right."""
    mask = np.all(frame == np.array(colour, dtype=np.uint8), axis=-1).astype(np.uint8)
    _, _, _, centres = cv2.connectedComponentsWithStats(mask)
    return centres[1:][np.argsort(centres[1:, 0])]


def test_dolly_zoom_keeps_the_subject_size_while_the_background_scales() -> None:
    h, w = 96, 128
    image, depth, _, _ = _scene(h, w, zf=2.0, zb=4.0)  # any scale: depth is normalised to the subject
    k = C.intrinsics(FOV, h, w)
    red, blue = (255, 0, 0), (0, 0, 255)
    for x_world, z, colour in ((-0.36, 2.0, red), (0.36, 2.0, red), (-1.5, 4.0, blue), (1.5, 4.0, blue)):
        u, v = round(k[0, 0] * x_world / z + k[0, 2]), round(k[1, 2])
        image[v - 1 : v + 2, u - 1 : u + 2] = colour
    cams = C.preset("dolly-zoom-in", 5, 1.0)
    # the trajectory itself: focal / distance to the subject is constant, the FOV widens
    sizes = [C.focal_from_fov(f, h) / (1.0 - t[2]) for f, t in zip(cams.fov, cams.translations, strict=True)]
    assert np.allclose(sizes, sizes[0], rtol=1e-9) and cams.fov[-1] > cams.fov[0] + 20
    frames, _ = C.render_image(image, depth, cams, (h, w))
    first_red, last_red = _marker_centres(frames[0], red), _marker_centres(frames[-1], red)
    first_blue, last_blue = _marker_centres(frames[0], blue), _marker_centres(frames[-1], blue)
    assert len(first_red) == len(last_red) == len(first_blue) == len(last_blue) == 2
    subject = (last_red[1, 0] - last_red[0, 0]) / (first_red[1, 0] - first_red[0, 0])
    background = (last_blue[1, 0] - last_blue[0, 0]) / (first_blue[1, 0] - first_blue[0, 0])
    assert abs(subject - 1.0) <= 0.02, f"subject scaled by {subject:.3f}"
    assert background < 0.8, f"background scaled by {background:.3f}"  # analytic: 0.667
    # a plain dolly-in scales the subject instead
    dolly, _ = C.render_image(image, depth, C.preset("dolly-in", 5, 1.0), (h, w))
    red_dolly = _marker_centres(dolly[-1], red)
    assert (red_dolly[1, 0] - red_dolly[0, 0]) / (first_red[1, 0] - first_red[0, 0]) > 1.5


def test_camera_control_and_video_rerender() -> None:
    image, depth, _, _ = _scene(60, 80, zf=3.0, zb=6.0)
    control = C.camera_control(image, C.preset("orbit-left", 9, 0.5), depth, (12, 16))
    assert control.shape == (9, 12, 16, 3) and control.dtype == np.uint8
    assert not np.all(control[0] == GREEN, axis=-1).any()  # frame 0: the image itself, no holes
    small = cv2.resize(image, (16, 12), interpolation=cv2.INTER_AREA).astype(int)
    assert np.abs(control[0].astype(int) - small).mean() < 25
    assert np.all(control[-1] == GREEN, axis=-1).mean() > 0.05  # orbiting reveals unseen background

    frames = np.stack([image, np.roll(image, 7, axis=1)])  # two different source frames
    depths = np.stack([depth, depth])
    static = C.preset("static", 2)
    same, holes = C.rerender_video(frames, depths, static, (60, 80))
    assert np.array_equal(same, frames) and not holes.any()
    frozen, _ = C.rerender_video(frames, depths, static, (60, 80), source_frames=[1, 1])  # retimed: freeze frame 1
    assert np.array_equal(frozen[0], frames[1])
    _, holes = C.rerender_video(frames, depths, C.preset("truck-left", 2), (60, 80))
    assert holes[1].mean() > 0.05 and not holes[0].any()
    with pytest.raises(BadInput, match="retiming"):
        C.rerender_video(frames, depths, static, (60, 80), source_frames=[0, 5])


# ----------------------------------------------------------------------------------------------- trajectories
def test_presets_move_the_way_their_names_say() -> None:
    names = [p["name"] for p in C.describe_presets()]
    assert {"static", "dolly-in", "dolly-out", "truck-left", "truck-right", "pan-left", "pan-right", "tilt-up",
            "tilt-down", "orbit-left", "orbit-right", "crane-up", "crane-down", "dolly-zoom-in"} <= set(names)
    for name in names:
        one, many = C.preset(name, 1), C.preset(name, 9)
        assert len(one) == 1 and len(many) == 9
        assert np.allclose(many.rotations[0], np.eye(3)) and np.allclose(many.translations[0], 0)
    last = {name: C.preset(name, 9) for name in names}
    look = {name: cams.rotations[-1] @ np.array([0, 0, 1.0]) for name, cams in last.items()}
    assert last["truck-right"].translations[-1][0] > 0 > last["truck-left"].translations[-1][0]
    assert last["crane-up"].translations[-1][1] < 0 < last["crane-down"].translations[-1][1]  # y is down
    assert last["dolly-in"].translations[-1][2] > 0 > last["dolly-out"].translations[-1][2]
    assert look["pan-right"][0] > 0 > look["pan-left"][0] and look["tilt-up"][1] < 0 < look["tilt-down"][1]
    orbit = last["orbit-right"]
    to_subject = np.array([0, 0, 1.0]) - orbit.translations[-1]
    assert orbit.translations[-1][0] > 0 and np.allclose(look["orbit-right"], to_subject / np.linalg.norm(to_subject))
    assert math.isclose(C._angle(C.preset("pan-right", 9, 0.5).rotations[-1]), C.PAN * 0.5)
    assert last["zoom-in"].fov[-1] < C.DEFAULT_FOV < last["zoom-out"].fov[-1]
    with pytest.raises(BadUsage, match="strength"):
        C.preset("dolly-in", 9, 2.0)
    with pytest.raises(BadUsage, match="not a number"):
        C.resolve_camera("pan-left@fast", 9)
    with pytest.raises(BadUsage, match="not a preset"):
        C.resolve_camera("spin", 9)
    assert math.isclose(C.resolve_camera("truck-left@0.5", 5).translations[-1][0], -C.MOVE * 0.5)


def test_trajectory_json_round_trips(tmp_path: Path) -> None:
    cams = C.preset("dolly-zoom-out", 7, 0.8, fov=40.0)
    path = C.save_trajectory(cams, tmp_path / "cam.json")
    loaded = C.load_trajectory(path, frames=7)
    assert np.allclose(loaded.rotations, cams.rotations, atol=1e-12)
    assert np.allclose(loaded.translations, cams.translations) and np.allclose(loaded.fov, cams.fov)
    assert loaded.name == "dolly-zoom-out" and loaded.unit == "subject"
    assert json.loads(path.read_text())["frames"][3]["fov"] == pytest.approx(cams.fov[3])
    # hand-written: 4-decimal rotations, a top-level default FOV, camera-0 not at the origin
    rounded = C.preset("orbit-left", 3)
    data = {"fov": 60, "translation_unit": "depth",
            "frames": [{"R": np.round(r, 4).tolist(), "t": (tr + np.array([1.0, 2.0, 3.0])).tolist()}
                       for r, tr in zip(rounded.rotations, rounded.translations, strict=True)]}
    (tmp_path / "hand.json").write_text(json.dumps(data))
    hand = C.load_trajectory(tmp_path / "hand.json")
    assert np.allclose(hand.fov, 60) and hand.unit == "depth"
    assert np.allclose(hand.relative_to_first().translations, rounded.translations, atol=1e-9)
    assert np.allclose(hand.rotations, rounded.rotations, atol=1e-4)


@pytest.mark.parametrize(("edit", "message"), [
    (lambda d: d["frames"].pop(), "4 cameras, but the video has 5 frames"),
    (lambda d: d["frames"][2].update(R=[[1, 0, 0], [0, 2, 0], [0, 0, 1]]), "frame 2: R is not orthonormal"),
    (lambda d: d["frames"][1].update(R=[[-1, 0, 0], [0, 1, 0], [0, 0, 1]]), "frame 1: R has determinant"),
    (lambda d: d["frames"][3].update(fov=180), r"frame 3: fov 180° is outside \(0, 180\)"),
    (lambda d: d["frames"][0].update(fov=0), r"frame 0: fov 0° is outside \(0, 180\)"),
    (lambda d: d["frames"][0].update(fov="wide"), "frame 0: fov: expected a number"),
    (lambda d: d["frames"][4].pop("t"), "frame 4: expected"),
    (lambda d: d["frames"][1].update(t=[0, 0]), "frame 1: t: expected a list of 3 numbers"),
    (lambda d: d.update(translation_unit="metres"), "translation_unit 'metres'"),
    (lambda d: d.update(frames={}), "a \"frames\" list"),
])
def test_bad_trajectory_json_is_refused_clearly(tmp_path: Path, edit, message: str) -> None:
    data = C.preset("pan-left", 5).to_dict()
    edit(data)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(BadInput, match=message) as info:
        C.load_trajectory(path, frames=5)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_unreadable_trajectory_files(tmp_path: Path) -> None:
    (tmp_path / "broken.json").write_text("{\"frames\": [")
    with pytest.raises(BadInput, match="not valid JSON"):
        C.resolve_camera(str(tmp_path / "broken.json"), 5)
    with pytest.raises(BadInput, match="not found"):
        C.load_trajectory(tmp_path / "missing.json")


# -------------------------------------------------------------------------------------------- camera accuracy
def test_rotation_error_recovers_the_requested_rotation() -> None:
    image, depth, _, _ = _scene(96, 128, seed=3)
    for spec in ("pan-right@0.5", "orbit-right@0.5", "truck-right"):
        cams = C.resolve_camera(spec, 5)
        frames, _ = C.render_image(image, depth, cams, (96, 128))
        right = C.rotation_error(cams, frames)
        assert right["frames_estimated"] == 4 and right["frames_failed"] == 0
        assert right["rotation_error_max_deg"] < 1.5, (spec, right)
        turned = C._angle(cams.rotations[-1])  # what a static request would miss: shows up as the estimate
        assert abs(right["estimated_rotation_deg"][-1] - turned) < 1.5 and (turned > 10 or spec == "truck-right")
    wrong = C.rotation_error(C.preset("static", 5), frames)  # truck-right: the requested rotation matters
    assert wrong["rotation_error_max_deg"] < 1.5
    wrong = C.rotation_error(C.preset("pan-left", 5, 0.5), frames)
    assert abs(wrong["per_frame_deg"][-1] - C.PAN * 0.5) < 1.5
    with pytest.raises(BadInput, match="5 frames, the trajectory 3"):
        C.rotation_error(C.preset("static", 3), frames)
    flat = C.rotation_error(C.preset("static", 3), np.full((3, 48, 64, 3), 128, np.uint8))
    assert flat["rotation_error_deg"] is None and "tracked points" in flat["reason"]


def test_opencv_camera_estimate_from_a_clip_with_depth() -> None:
    image, depth, _, _ = _scene(96, 128, seed=5)
    cams = C.resolve_camera("orbit-left@0.5", 7)
    frames, _ = C.render_image(image, depth, cams, (96, 128))
    est = C.estimate_trajectory(frames, depth, FOV)
    assert np.abs(est.translations - cams.translations).max() < 0.05
    assert max(C._angle(a.T @ b) for a, b in zip(est.rotations, cams.rotations, strict=True)) < 1.0
    with pytest.raises(BadInput, match=r"camera\.json"):
        C.estimate_trajectory(np.full((3, 48, 64, 3), 90, np.uint8), depth[:48, :64], FOV)


# -------------------------------------------------------------------------------------------------- depth I/O
def test_depth_files_and_disparity(tmp_path: Path) -> None:
    disparity = np.tile(np.linspace(0, 1, 32, dtype=np.float32), (24, 1))  # near on the right
    z = C.disparity_to_depth(disparity)
    assert np.all(np.diff(z, axis=1) <= 0) and z.max() / z.min() == pytest.approx(C.FAR_RATIO, rel=0.05)
    cv2.imwrite(str(tmp_path / "d.png"), (disparity * 65535).astype(np.uint16))
    assert np.allclose(C.load_depth(tmp_path / "d.png"), z, rtol=1e-3)
    np.save(tmp_path / "z.npy", z)
    assert np.array_equal(C.load_depth(tmp_path / "z.npy"), z)
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(BadInput, match=r"not a readable \.npy"):
        C.load_depth(tmp_path / "obj.npy")
    np.save(tmp_path / "neg.npy", -z)
    with pytest.raises(BadInput, match="no positive values"):
        C.load_depth(tmp_path / "neg.npy")
    assert C.normalise_depth(np.full((6, 9), 7.0, np.float32)).mean() == pytest.approx(1.0)
    wide = np.tile(np.arange(40, dtype=np.float32), (20, 1))
    assert C.fit_depth(wide, 20, 20).shape == (20, 20)
    assert C.fit_depth(wide, 20, 20)[0, 0] == pytest.approx(10.0, abs=1)  # centre crop, as fit_to_bucket


# ------------------------------------------------------------------------------------------------- modalities
class _KnownDisparity:
    """Stands in for the depth model (same `predict` API as modalities.depth's extractor): the scene's disparity."""

    def __init__(self, depth: np.ndarray) -> None:
        self.depth = depth
        self.calls = 0

    def predict(self, frames: np.ndarray) -> np.ndarray:
        self.calls += 1
        return np.repeat((1.0 / self.depth)[None], len(frames), axis=0)


def _clip(frames: np.ndarray, tmp_path: Path | None) -> Clip:
    clip = Clip(frames=frames, fps=12.0, key="clip.mp4", seed=0,
                reference_size=(frames.shape[1] // 4, frames.shape[2] // 4))
    if tmp_path is not None:
        clip.source = tmp_path / "clip.mp4"  # type: ignore[attr-defined]  # prepare passes the video's path
    return clip


def test_camera_image_extractor_from_sidecars_and_estimates(tmp_path: Path) -> None:
    from avctl.modalities.camera_image import CAMERA_IMAGE, CameraImageExtractor

    # background 10× the subject's distance: the far/near ratio a relative-disparity model's depth is mapped to, so
    # the stand-in depth model below gives back this exact scene
    image, depth, _, _ = _scene(96, 128, zf=1.0, zb=C.FAR_RATIO, seed=7)
    cams = C.resolve_camera("truck-left@0.6", 5)
    video, _ = C.render_image(image, depth, cams, (96, 128))  # stands in for a real clip with known cameras
    extractor = CameraImageExtractor(backend="files")
    with pytest.raises(BadInput, match=r"clip\.depth\.npy not found"):
        extractor(_clip(video, tmp_path))
    np.save(tmp_path / "clip.depth.npy", depth)
    with pytest.raises(BadInput, match=r"clip\.camera\.json not found"):
        extractor(_clip(video, tmp_path))
    C.save_trajectory(cams, tmp_path / "clip.camera.json")
    control = extractor(_clip(video, tmp_path))
    expected = C.camera_control(image, cams, depth, (24, 32))  # frame 0 along the sidecar's cameras
    assert control.frames is not None and control.frames.shape == (5, 24, 32, 3)
    assert np.array_equal(control.frames, expected)
    assert np.all(control.frames[-1] == GREEN, axis=-1).mean() > 0.05 and CAMERA_IMAGE.downscale == 4

    # no sidecars: cameras estimated with OpenCV, depth from the (stand-in) depth model
    model = _KnownDisparity(depth)
    guessing = CameraImageExtractor(depth_model=model)
    estimated = guessing(_clip(video, None))
    assert model.calls == 1 and estimated.frames is not None and estimated.frames.shape == (5, 24, 32, 3)
    assert np.array_equal(estimated.frames[0], expected[0])
    # the disocclusion, without the frame's edge columns: a move left also uncovers a sliver at the left edge, and
    # whether that sliver fills a whole column of the 32-px reference turns on a fraction of a pixel
    guessed_holes = np.all(estimated.frames[-1] == GREEN, -1)[:, 1:-1]
    true_holes = np.all(expected[-1] == GREEN, -1)[:, 1:-1]
    assert abs(guessed_holes.mean() - true_holes.mean()) < 0.25 * true_holes.mean()
    centres = np.nonzero(guessed_holes)[1].mean(), np.nonzero(true_holes)[1].mean()
    assert max(centres) < 16 and abs(centres[0] - centres[1]) < 4  # both left of the box, as a move left reveals
    found = guessing.cameras(_clip(video, None), None, C.normalise_depth(depth))
    assert abs(found.translations[-1][0] - cams.translations[-1][0]) < 0.05  # moved left about as far
    assert found.name == "opencv-pnp estimate"  # parallax: the translation model wins
    assert max(C._angle(r) for r in found.rotations) < 0.3  # and the camera did not turn

    with pytest.raises(BadUsage, match="licence"):
        CameraImageExtractor(backend="spatialtracker-v2")
    with pytest.raises(BadUsage, match="unknown camera-image backend"):
        CameraImageExtractor(backend="colmap")


def test_camera_image_without_depth_weights_says_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    from avctl.modalities.camera_image import CameraImageExtractor

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.delenv("AVCTL_HOME", raising=False)
    with pytest.raises(MissingWeights, match=r"camera-image needs depth.*depth\.npy.*--backend files"):
        CameraImageExtractor(weights=tmp_path / "none")


def test_camera_modalities_keep_table_5() -> None:
    from avctl.modalities.base import get_modality

    image, video, cut = (get_modality(n) for n in ("camera-image", "camera-video", "cut-on-action"))
    assert (image.downscale, image.rank, image.targets, image.first_frame_image) == (4, 32, ("V.SA", "V.CA", "V.FF"),
                                                                                    True)
    assert (video.downscale, video.rank, video.targets, video.paired) == (1, 128, ("V.SA",), True)
    assert (cut.downscale, cut.rank, cut.targets, cut.paired) == (1, 128, ("V.SA", "V.FF"), True)
    assert "#66FF00" in image.extractor_note and "rerender_video" in video.extractor_note
    assert "bootstrap" in cut.extractor_note


def test_generation_entry_points_take_cli_values(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    image, depth, _, _ = _scene(48, 64, zf=2.0, zb=4.0)
    np.save(tmp_path / "d.npy", depth)
    control, cams = C.camera_image_control(image, "dolly-zoom-in@0.5", 9, (12, 16), depth=tmp_path / "d.npy")
    assert control.shape == (9, 12, 16, 3) and cams.name == "dolly-zoom-in" and len(cams) == 9
    assert np.array_equal(control, C.camera_control(image, cams, depth, (12, 16)))
    C.save_trajectory(C.preset("tilt-up", 3), tmp_path / "t.json")
    video = np.stack([image] * 3)
    rerendered, cams = C.camera_video_control_for(video, str(tmp_path / "t.json"), (48, 64), depth=tmp_path / "d.npy")
    assert rerendered.shape == (3, 48, 64, 3) and np.array_equal(rerendered[0], image) and cams.name == "tilt-up"
    with pytest.raises(BadInput, match="2 cameras, but the video has 3 frames"):
        C.save_trajectory(C.preset("tilt-up", 2), tmp_path / "t2.json")
        C.camera_video_control_for(video, str(tmp_path / "t2.json"), (48, 64), depth=tmp_path / "d.npy")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.delenv("AVCTL_HOME", raising=False)
    with pytest.raises(MissingWeights, match=r"camera control needs depth: pass --depth PATH") as info:
        C.camera_image_control(image, "static", 9, (12, 16))
    assert "\n" not in str(info.value)
