"""Model-backed extractors (depth: Depth-Anything via transformers; pose: DWPose via onnxruntime), run end to end
on tiny random models built here. Nothing is downloaded (conftest sets HF_HUB_OFFLINE)."""

from __future__ import annotations

import math
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import cv2
import numpy as np
import pytest

from avctl.errors import BadInput, BadUsage, MissingWeights
from avctl.modalities import depth as depth_mod
from avctl.modalities import pose as pose_mod
from avctl.modalities.base import Clip
from avctl.modalities.pose import draw_pose


def _clip(frames: np.ndarray, reference_size: tuple[int, int]) -> Clip:
    return Clip(frames=frames, fps=24.0, key="a/b.mp4", seed=0, reference_size=reference_size)


@pytest.fixture
def empty_hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hugging Face cache and no $AVCTL_HOME, so weight lookups can only fail."""
    import huggingface_hub.constants

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.delenv("AVCTL_HOME", raising=False)
    return cache


# ------------------------------------------------------------------------------------------------------------ depth
@pytest.fixture(scope="module")
def tiny_depth_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-init Depth-Anything (4-layer Dinov2 backbone, ~100k parameters) + its processor, saved locally."""
    import torch
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config, DPTImageProcessor

    torch.manual_seed(0)
    backbone = Dinov2Config(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64,
                            image_size=56, patch_size=14, reshape_hidden_states=False,
                            out_features=["stage1", "stage2", "stage3", "stage4"])
    config = DepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=32, neck_hidden_sizes=[8, 16, 32, 32],
                                 fusion_hidden_size=8, head_hidden_size=8)
    processor = DPTImageProcessor(size={"height": 56, "width": 56}, keep_aspect_ratio=True, ensure_multiple_of=14,
                                  image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])
    directory = tmp_path_factory.mktemp("tiny-depth-anything")
    DepthAnythingForDepthEstimation(config).save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def depth_extractor(tiny_depth_dir: Path) -> depth_mod.DepthAnythingExtractor:
    return depth_mod.DepthAnythingExtractor.from_pretrained(tiny_depth_dir, device="cpu", batch_size=2)


def test_depth_real_model_output_shape_and_range(depth_extractor: depth_mod.DepthAnythingExtractor) -> None:
    frames = np.random.default_rng(0).integers(0, 256, size=(3, 64, 96, 3), dtype=np.uint8)
    control = depth_extractor(_clip(frames, (32, 48)))
    out = control.frames
    assert out is not None and out.shape == (3, 32, 48, 3) and out.dtype == np.uint8
    assert control.mask is None
    assert out.min() == 0 and out.max() == 255  # the clip spans the full range
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()  # grey
    assert depth_extractor.backend == "depth-anything-v2" and "clip-wide" in depth_extractor.version


def test_depth_is_normalised_over_the_clip_not_per_frame(
    depth_extractor: depth_mod.DepthAnythingExtractor, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Frame k's inverse depth is ramp × scale_k: one clip-wide min/max keeps frame 0 dark and frame 2 bright
    (per-frame min/max would make all three identical), near (large inverse depth) is white, and the model runs
    in batches."""
    import torch

    scales = [1.0, 2.0, 4.0]
    calls: list[int] = []
    ramp = torch.linspace(1.0, 2.0, 28).repeat(14, 1)  # [14, 28]: inverse depth grows left → right

    def fake_forward(pixel_values: torch.Tensor) -> SimpleNamespace:
        first = sum(calls)
        calls.append(len(pixel_values))
        stack = [ramp * scales[first + i] for i in range(len(pixel_values))]
        return SimpleNamespace(predicted_depth=torch.stack(stack))

    monkeypatch.setattr(depth_extractor.model, "forward", fake_forward)
    frames = np.zeros((3, 64, 96, 3), dtype=np.uint8)
    out = depth_extractor(_clip(frames, (32, 48))).frames
    assert out is not None
    assert calls == [2, 1]  # batches of 2, one model

    big = torch.nn.functional.interpolate(ramp[None, None], size=(64, 96), mode="bilinear", align_corners=False)
    small = cv2.resize(big[0, 0].numpy(), (48, 32), interpolation=cv2.INTER_AREA)  # [32, 48]
    stacked = np.stack([small * s for s in scales])
    expected = (stacked - stacked.min()) / (stacked.max() - stacked.min()) * 255
    assert np.abs(out[..., 0].astype(float) - expected).max() <= 1.0
    assert out[0].mean() < 50 < 150 < out[2].mean()  # frame brightness follows depth scale: no flicker
    assert out[2, :, -1, 0].mean() > out[2, :, 0, 0].mean()  # near = white


def test_render_depth_constant_clip_is_black() -> None:
    out = depth_mod.render_depth(np.full((2, 8, 8), 3.0, dtype=np.float32), (4, 4))
    assert out.shape == (2, 4, 4, 3) and not out.any()


def test_depth_factory_lookup_order(tiny_depth_dir: Path, tmp_path: Path, empty_hf_cache: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    # a weights dir holding <backend>/
    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "depth-anything-v2").symlink_to(tiny_depth_dir, target_is_directory=True)
    found = depth_mod.depth_extractor(weights=weights)
    assert isinstance(found, depth_mod.DepthAnythingExtractor) and found.source.endswith("depth-anything-v2")
    # the model dir itself
    assert depth_mod.depth_extractor(weights=tiny_depth_dir).source == str(tiny_depth_dir)
    # $AVCTL_HOME/weights/<backend>
    home = tmp_path / "home"
    (home / "weights").mkdir(parents=True)
    (home / "weights" / "depth-anything-v2").symlink_to(tiny_depth_dir, target_is_directory=True)
    monkeypatch.setenv("AVCTL_HOME", str(home))
    assert depth_mod.depth_extractor().source == str(home / "weights" / "depth-anything-v2")
    with pytest.raises(BadUsage, match="unknown depth backend"):
        depth_mod.depth_extractor(backend="midas")


def test_depth_missing_weights_fail_fast_with_the_repo_id(tmp_path: Path, empty_hf_cache: Path) -> None:
    start = time.monotonic()
    with pytest.raises(MissingWeights) as info:
        depth_mod.depth_extractor(weights=tmp_path / "nothing-here")
    message = str(info.value)
    assert "depth-anything/Depth-Anything-V2-Small-hf" in message and "nothing-here" in message
    assert "\n" not in message
    with pytest.raises(MissingWeights, match="depth-anything/Depth-Anything-V2-Small-hf"):
        depth_mod.DepthAnythingExtractor.from_pretrained("depth-anything/Depth-Anything-V2-Small-hf")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(MissingWeights, match=r"no config\.json"):
        depth_mod.DepthAnythingExtractor.from_pretrained(empty)
    assert time.monotonic() - start < 5


def test_depth_modality_uses_the_factory() -> None:
    assert depth_mod.DEPTH.extractor is depth_mod.depth_extractor
    assert "whole clip" in depth_mod.DEPTH.extractor_note


# ------------------------------------------------------------------------------------------------------------- pose
def test_draw_pose_body_limbs_and_dots() -> None:
    keypoints = np.zeros((1, 18, 2))
    scores = np.zeros((1, 18))
    for index, (x, y) in {0: (50, 20), 1: (50, 40), 2: (30, 40), 3: (10, 70)}.items():
        keypoints[0, index] = (x, y)
        scores[0, index] = 1.0
    scores[0, 3] = 0.1  # right elbow below the threshold: neither its dot nor its limb is drawn
    canvas = pose_mod.draw_pose(keypoints, scores, 100, 120)
    assert canvas.shape == (100, 120, 3) and canvas.dtype == np.uint8

    def dim(colour: tuple[int, int, int]) -> tuple[int, ...]:
        return tuple(int(v * 0.6) for v in colour)

    assert tuple(canvas[40, 40]) == dim((255, 0, 0))  # neck → right shoulder: limb 0, red, dimmed
    assert tuple(canvas[30, 50]) == dim((0, 0, 255))  # neck → nose: limb 12, blue, dimmed
    assert tuple(canvas[20, 50]) == (255, 0, 0)  # nose dot
    assert tuple(canvas[40, 50]) == (255, 85, 0)  # neck dot
    assert tuple(canvas[40, 30]) == (255, 170, 0)  # right shoulder dot
    assert not canvas[70, 10].any() and not canvas[55, 20].any()  # the hidden elbow and its limb
    assert not canvas[90, 110].any()  # background stays black
    limb_width = int((canvas[:, 40] != 0).any(axis=1).sum())
    assert 7 <= limb_width <= 10  # an ellipse of semi-minor axis 4


def test_draw_pose_hands_and_face() -> None:
    keypoints = np.zeros((1, 134, 2))
    scores = np.zeros((1, 134))
    keypoints[0, 92], keypoints[0, 93] = (100, 60), (120, 60)  # first hand: wrist and thumb base
    keypoints[0, 24] = (80, 90)  # a face landmark
    scores[0, [92, 93, 24]] = 1.0
    canvas = pose_mod.draw_pose(keypoints, scores, 100, 140)
    assert tuple(canvas[60, 110]) == (255, 0, 0)  # hand edge 0: hue 0
    assert tuple(canvas[60, 100]) == (0, 0, 255)  # hand keypoint dots are blue
    assert tuple(canvas[90, 80]) == (255, 255, 255)  # face dots are white
    assert not canvas[:, :60].any()  # nothing from the invisible body
    with pytest.raises(ValueError, match="18\\|134"):
        pose_mod.draw_pose(np.zeros((1, 17, 2)), np.zeros((1, 17)), 10, 10)


def test_to_openpose_inserts_the_neck_and_reorders() -> None:
    coco = np.stack([np.arange(133.0), np.zeros(133)], -1)[None]  # x = COCO-WholeBody index
    scores = np.ones((1, 133))
    points, conf = pose_mod.to_openpose(coco, scores)
    assert points.shape == (1, 134, 2) and conf.shape == (1, 134)
    xs = points[0, :18, 0].tolist()
    assert xs == [0, 5.5, 6, 8, 10, 5, 7, 9, 12, 14, 16, 11, 13, 15, 2, 1, 4, 3]
    assert points[0, 18, 0] == 17 and points[0, 133, 0] == 132  # feet, face and hands keep their order
    scores[0, 6] = 0.2
    assert pose_mod.to_openpose(coco, scores)[1][0, 1] == 0.0  # no neck without both shoulders


# DWPose-shaped tiny ONNX models: the output is a constant that still depends on the input's batch size.
DET_SIZE, POSE_H, POSE_W = 640, 384, 288
ANCHORS = sum((DET_SIZE // s) ** 2 for s in (8, 16, 32))  # 8400


def _constant_model(path: Path, input_name: str, input_shape: list[Any], outputs: dict[str, np.ndarray]) -> None:
    import onnx  # a dev dependency (pyproject [dev]): the tests build tiny DWPose-shaped models with it
    from onnx import TensorProto, helper, numpy_helper

    nodes = [helper.make_node("ReduceMean", [input_name], ["mean"], axes=[1, 2, 3], keepdims=0),  # [N]
             helper.make_node("Unsqueeze", ["mean", "axes"], ["column"]),  # [N, 1, 1]
             helper.make_node("Mul", ["column", "zero"], ["zeros"])]
    inits = [numpy_helper.from_array(np.array([1, 2], dtype=np.int64), "axes"),
             numpy_helper.from_array(np.zeros((), dtype=np.float32), "zero")]
    graph_outputs = []
    for name, value in outputs.items():
        inits.append(numpy_helper.from_array(value.astype(np.float32), f"{name}_const"))
        nodes.append(helper.make_node("Add", ["zeros", f"{name}_const"], [name]))
        graph_outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", *value.shape[1:]]))
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info(input_name, TensorProto.FLOAT,
                                                                               input_shape)], graph_outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _detector(path: Path, box: tuple[int, int, float, float] | None) -> None:
    """YOLOX-shaped: one person at stride-32 cell (gx, gy) with size (w, h) in letterbox pixels, or nobody."""
    raw = np.zeros((1, ANCHORS, 85), dtype=np.float32)
    if box is not None:
        gx, gy, w, h = box
        anchor = (DET_SIZE // 8) ** 2 + (DET_SIZE // 16) ** 2 + gy * (DET_SIZE // 32) + gx
        raw[0, anchor, :6] = (0.0, 0.0, math.log(w / 32), math.log(h / 32), 0.9, 0.9)
    _constant_model(path, "images", [1, 3, DET_SIZE, DET_SIZE], {"output": raw})  # fixed batch 1, like DWPose


# crop-pixel positions of the COCO-WholeBody keypoints the tiny pose model "finds"; every other score is 0
POSE_PEAKS = {0: (144.0, 96.0), 5: (216.0, 192.0), 6: (72.0, 192.0)}  # nose, left shoulder, right shoulder


def _pose_model(path: Path) -> None:
    simcc_x = np.zeros((1, 133, POSE_W * 2), dtype=np.float32)
    simcc_y = np.zeros((1, 133, POSE_H * 2), dtype=np.float32)
    for k, (x, y) in POSE_PEAKS.items():
        simcc_x[0, k, int(x * 2)] = 1.0
        simcc_y[0, k, int(y * 2)] = 1.0
    _constant_model(path, "input", ["N", 3, POSE_H, POSE_W], {"simcc_x": simcc_x, "simcc_y": simcc_y})


@pytest.fixture(scope="module")
def dwpose_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("dwpose")
    _detector(directory / "yolox_l.onnx", (10, 6, 128.0, 192.0))  # centre (320, 192) in the 640² letterbox
    _pose_model(directory / "dw-ll_ucoco_384.onnx")
    return directory


def test_dwpose_end_to_end_on_tiny_onnx_models(dwpose_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(pose_mod, "_warned_cpu", False)
    extractor = pose_mod.DWPoseExtractor.from_pretrained(dwpose_dir)
    if extractor.providers == ["CPUExecutionProvider"]:
        assert "no CUDA provider" in capsys.readouterr().err  # loud, not silent, CPU fallback
    frames = np.random.default_rng(1).integers(0, 256, size=(3, 160, 320, 3), dtype=np.uint8)

    # letterbox ratio min(640/160, 640/320) = 2: the person box is centre (160, 96), 64 × 96 in frame pixels
    boxes = extractor.detect_people(frames)
    assert len(boxes) == 3 and all(b.shape == (1, 5) for b in boxes)
    np.testing.assert_allclose(boxes[0][0, :4], [128, 48, 192, 144], atol=1e-3)
    assert boxes[0][0, 4] == pytest.approx(0.81)

    # crop: padded 80 × 120, widened to 3:4 → scale (90, 120); crop pixel p maps to p / size * scale + centre - scale/2
    def to_frame(x: float, y: float) -> tuple[float, float]:
        return x / POSE_W * 90 + 160 - 45, y / POSE_H * 120 + 96 - 60

    poses = extractor.estimate(frames, boxes)
    points, scores = poses[2]
    assert points.shape == (1, 134, 2) and scores.shape == (1, 134)
    nose, left, right = (to_frame(*POSE_PEAKS[k]) for k in (0, 5, 6))
    np.testing.assert_allclose(points[0, 0], nose, atol=0.5)
    np.testing.assert_allclose(points[0, 2], right, atol=0.5)  # OpenPose 2 = right shoulder
    np.testing.assert_allclose(points[0, 5], left, atol=0.5)  # OpenPose 5 = left shoulder
    np.testing.assert_allclose(points[0, 1], ((left[0] + right[0]) / 2, 96), atol=0.5)  # the neck
    assert set(np.flatnonzero(scores[0] > 0.3)) == {0, 1, 2, 5}

    control = extractor(_clip(frames, (80, 160)))
    out = control.frames
    assert out is not None and out.shape == (3, 80, 160, 3) and out.dtype == np.uint8
    # neck → right shoulder limb (red ×0.6) between (137.5, 96) and (160, 96): reference pixel (74, 48)
    assert np.abs(out[0, 48, 74].astype(int) - (153, 0, 0)).max() <= 2
    # neck → nose limb (blue ×0.6), at frame (160, 81) → reference (80, 40)
    assert np.abs(out[0, 40, 80].astype(int) - (0, 0, 153)).max() <= 2
    assert not out[:, :, :40].any() and not out[:, :10].any()  # black away from the person
    assert (out[0] == out[2]).all()  # same detections → same drawing


def test_dwpose_no_person_is_bad_input(tmp_path: Path) -> None:
    _detector(tmp_path / "yolox_l.onnx", None)
    _pose_model(tmp_path / "dw-ll_ucoco_384.onnx")
    extractor = pose_mod.DWPoseExtractor.from_pretrained(tmp_path, device="cpu")
    with pytest.raises(BadInput, match="no person"):
        extractor(_clip(np.zeros((2, 64, 64, 3), dtype=np.uint8), (32, 32)))


def test_dwpose_missing_files(tmp_path: Path, empty_hf_cache: Path, dwpose_dir: Path,
                              monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "yolox_l.onnx").write_bytes(b"")
    start = time.monotonic()
    with pytest.raises(MissingWeights) as info:
        pose_mod.DWPoseExtractor.from_pretrained(tmp_path)
    assert "dw-ll_ucoco_384.onnx" in str(info.value) and "yolox_l.onnx in" not in str(info.value)
    with pytest.raises(MissingWeights) as info:
        pose_mod.pose_extractor(weights=tmp_path / "nothing")
    message = str(info.value)
    assert all(s in message for s in ("yzd-v/DWPose", "yolox_l.onnx", "dw-ll_ucoco_384.onnx", "nothing"))
    assert "\n" not in message and time.monotonic() - start < 5
    with pytest.raises(BadUsage, match="unknown pose backend"):
        pose_mod.pose_extractor(backend="openpose")
    # found through $AVCTL_HOME/weights/dwpose
    (tmp_path / "home" / "weights").mkdir(parents=True)
    (tmp_path / "home" / "weights" / "dwpose").symlink_to(dwpose_dir, target_is_directory=True)
    monkeypatch.setenv("AVCTL_HOME", str(tmp_path / "home"))
    assert pose_mod.pose_extractor().source == str(tmp_path / "home" / "weights" / "dwpose")


def test_pose_modality_uses_the_factory() -> None:
    assert pose_mod.POSE.extractor is pose_mod.pose_extractor
    assert "DWPose" in pose_mod.POSE.extractor_note


# ------------------------------------------------------------------------------------- eval: re-estimate on the output
def test_depth_agreement_is_scale_invariant_and_falls_with_noise() -> None:
    from avctl.metrics import depth_agreement

    rng = np.random.default_rng(0)
    ys, xs = np.mgrid[0:24, 0:32]
    disparity = np.stack([(xs + 2 * ys + 3 * i) / 100.0 for i in range(4)]).astype(np.float32)  # [F, h, w]
    control = np.repeat(depth_mod.render_depth(disparity, (24, 32)), 1, axis=0)
    same = depth_agreement(control, 7.0 * np.repeat(np.repeat(disparity, 2, 1), 2, 2) + 3.0)  # 2× size, rescaled
    assert same["depth_correlation"] > 0.999 and same["depth_aligned_rmse"] < 0.01
    scores = [depth_agreement(control, disparity + rng.normal(0, noise, disparity.shape))["depth_correlation"]
              for noise in (0.02, 0.1, 0.5)]
    assert scores[0] > scores[1] > scores[2]
    assert depth_agreement(control, -disparity)["depth_correlation"] < -0.99  # near/far swapped
    with pytest.raises(BadInput, match="constant"):
        depth_agreement(np.zeros_like(control), disparity)


def test_pose_agreement_falls_as_the_skeleton_moves() -> None:
    from avctl.metrics import pose_agreement

    points = np.zeros((1, 18, 2))
    points[0, :, 0] = np.linspace(20, 100, 18)
    points[0, :, 1] = np.linspace(20, 70, 18)
    scores = np.ones((1, 18))

    def drawn(dx: float) -> np.ndarray:
        return draw_pose(points + np.array([dx, 0.0]), scores, 96, 128)[None]

    values = [pose_agreement(drawn(0), drawn(dx)) for dx in (0, 2, 8, 30)]
    assert values[0] == 1.0 and values[0] >= values[1] > values[2] > values[3]
    assert pose_agreement(drawn(0), np.zeros_like(drawn(0))) == 0.0


def test_eval_reestimates_depth_and_pose_with_given_weights(tiny_depth_dir: Path, dwpose_dir: Path,
                                                            tmp_path: Path) -> None:
    from avctl.media import write_video
    from avctl.metrics import evaluate_pair

    frames = np.random.default_rng(3).integers(0, 256, size=(4, 160, 320, 3), dtype=np.uint8)
    frames = cv2.GaussianBlur(frames.reshape(-1, 320, 3), (9, 9), 3).reshape(frames.shape)  # compresses faithfully
    output = tmp_path / "out.mp4"
    write_video(output, frames, 12.0, lossless=True)

    depth_control = tmp_path / "depth.mp4"
    extractor = depth_mod.DepthAnythingExtractor.from_pretrained(tiny_depth_dir, device="cpu")
    write_video(depth_control, extractor(_clip(frames, (80, 160))).frames, 12.0, lossless=True)
    result = evaluate_pair("depth", depth_control, output, weights=tiny_depth_dir)
    assert result["metrics"]["depth_correlation"] > 0.99  # the control was made from this very clip
    assert result["metrics"]["depth_aligned_rmse"] < 0.02
    assert "depth_correlation" not in result["not_available"]

    pose_control = tmp_path / "pose.mp4"
    drawn = pose_mod.DWPoseExtractor.from_pretrained(dwpose_dir)(_clip(frames, (80, 160))).frames
    write_video(pose_control, drawn, 12.0, lossless=True)
    assert evaluate_pair("pose", pose_control, output, weights=dwpose_dir)["metrics"]["pose_skeleton_f1"] == 1.0
    black = tmp_path / "black.mp4"
    write_video(black, np.zeros_like(drawn), 12.0, lossless=True)
    assert evaluate_pair("pose", black, output, weights=dwpose_dir)["metrics"]["pose_skeleton_f1"] == 0.0


def test_brisque_without_opencv_contrib_is_not_available(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from avctl.media import write_video
    from avctl.metrics import evaluate_pair

    monkeypatch.delattr(cv2, "quality", raising=False)  # as with plain opencv-python
    video = tmp_path / "v.mp4"
    write_video(video, np.zeros((3, 32, 32, 3), dtype=np.uint8), 12.0)
    result = evaluate_pair("canny", video, video, brisque_model=tmp_path)
    assert "brisque" not in result["metrics"] and "opencv-contrib" in result["not_available"]["brisque"]
