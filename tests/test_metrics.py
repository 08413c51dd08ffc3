"""avctl.metrics: control-fidelity, temporal and audio metrics on synthetic media, the contact sheet, and the
evaluation of generated mp4s with their sidecars."""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from avctl.errors import BadInput
from avctl.media import write_video
from avctl.metrics import (
    SHEET_CAPTION_LINE_HEIGHT,
    SHEET_GAP,
    SHEET_LABEL_HEIGHT,
    VBENCH_NOT_AVAILABLE,
    audio_envelope_correlation,
    contact_sheet,
    dynamic_degree,
    edge_f1,
    evaluate_pair,
    evaluate_runs,
    flicker,
    flow_frames,
    masked_psnr,
    masked_ssim,
    motion_smoothness,
    plain_canny_f1,
    sheet_rows,
    temporal_flickering,
    vbench_is_dynamic,
    warp_error,
)
from avctl.modalities.base import Clip
from avctl.modalities.canny import CannyExtractor
from tests.conftest import synthetic_frames

TEMPORAL = ("warp_error", "flicker", "temporal_flickering", "motion_smoothness", "dynamic_degree", "vbench_is_dynamic")


def translating_texture(frames: int, width: int = 96, height: int = 72, dx: float = 1.5, dy: float = 0.5,
                        seed: int = 0) -> np.ndarray:
    """[F, H, W, 3] uint8: a smooth random colour texture panning by (dx, dy) pixels per frame (sub-pixel, bilinear)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(height // 3 + 1, width // 3 + 1, 3)).astype(np.uint8)
    texture = cv2.resize(small, (width * 2, height * 2), interpolation=cv2.INTER_CUBIC).astype(np.float32)
    out = []
    for i in range(frames):
        shift = np.float32([[1, 0, -dx * i - 8], [0, 1, -dy * i - 8]])
        out.append(cv2.warpAffine(texture, shift, (width, height), flags=cv2.INTER_LINEAR))
    return np.clip(np.rint(np.stack(out)), 0, 255).astype(np.uint8)


def with_flicker(frames: np.ndarray, level: int = 12) -> np.ndarray:
    """Every other frame +level, the rest −level grey levels."""
    offsets = np.where(np.arange(len(frames)) % 2 == 0, level, -level)[:, None, None, None]
    return np.clip(frames.astype(np.int16) + offsets, 0, 255).astype(np.uint8)


def canny_control(frames: np.ndarray, downscale: int) -> np.ndarray:
    """The control the canny modality's own extractor makes from these frames."""
    height, width = frames.shape[1:3]
    clip = Clip(frames=frames, fps=12.0, key="clip.mp4", seed=0,
                reference_size=(height // downscale, width // downscale))
    control = CannyExtractor()(clip).frames
    assert control is not None
    return control


# ----------------------------------------------------------------------------------------------------------- edges
@pytest.mark.parametrize("downscale", [1, 2])
def test_edge_f1_is_one_for_identical_edges_and_falls_with_blur(downscale: int) -> None:
    source = translating_texture(4, 128, 96)
    control = canny_control(source, downscale)
    scores = []
    for sigma in (0, 1, 2, 4):
        output = source if sigma == 0 else np.stack([cv2.GaussianBlur(f, (0, 0), sigma) for f in source])
        scores.append(edge_f1(control, output))
    assert scores[0] == 1.0
    assert all(a > b for a, b in itertools.pairwise(scores)), scores
    assert scores[-1] < 0.5


def test_edge_f1_empty_edge_maps() -> None:
    black = np.zeros((2, 48, 64, 3), dtype=np.uint8)
    textured = translating_texture(2, 64, 48)
    assert edge_f1(black, black) == 1.0  # nothing to find, nothing found
    assert edge_f1(black, textured) == 0.0  # edges where the control has none
    assert edge_f1(canny_control(textured, 1), black) == 0.0  # control edges, none in the output
    with pytest.raises(BadInput, match="frames"):
        edge_f1(black, textured[:1])


def test_edge_f1_tolerance_forgives_small_shifts_only() -> None:
    control = np.zeros((1, 64, 64, 3), dtype=np.uint8)
    control[0, :, 30] = 255  # a vertical edge line
    output = np.zeros((1, 64, 64, 3), dtype=np.uint8)
    output[0, :, 33:] = 255  # a step whose Canny edge lies at x = 32 or 33
    assert edge_f1(control, output, tolerance_px=4) == 1.0
    assert edge_f1(control, output, tolerance_px=0) == 0.0


# ---------------------------------------------------------------------------------------------------- masked metrics
def test_masked_psnr_and_ssim_ignore_the_hole() -> None:
    reference = translating_texture(3, 64, 48)
    rng = np.random.default_rng(1)
    output = np.clip(reference.astype(np.int16) + rng.integers(-10, 11, reference.shape), 0, 255).astype(np.uint8)
    mask = np.zeros((48, 64), dtype=np.uint8)
    mask[10:30, 20:44] = 255
    psnr, ssim = masked_psnr(reference, output, mask), masked_ssim(reference, output, mask)
    assert 20 < psnr < 40 and 0 < ssim < 1

    inside = output.copy()
    inside[:, 10:30, 20:44] = rng.integers(0, 256, size=(3, 20, 24, 3))  # garbage in the hole only
    assert masked_psnr(reference, inside, mask) == psnr
    assert masked_ssim(reference, inside, mask) == pytest.approx(ssim, abs=1e-12)
    per_frame_mask = np.broadcast_to(mask, (3, 48, 64))
    assert masked_psnr(reference, inside, per_frame_mask) == psnr

    outside = output.copy()
    outside[:, 35:, :] = 255 - outside[:, 35:, :]  # damage outside the hole
    assert masked_psnr(reference, outside, mask) < psnr - 3
    assert masked_ssim(reference, outside, mask) < ssim - 0.05

    assert masked_psnr(reference, reference, mask) == float("inf")
    assert masked_ssim(reference, reference, mask) == pytest.approx(1.0)
    with pytest.raises(BadInput, match="covers every pixel"):
        masked_psnr(reference, output, np.full((48, 64), 255, dtype=np.uint8))


def test_masked_ssim_without_a_hole_is_standard_ssim() -> None:
    reference = translating_texture(2, 64, 48)
    output = np.stack([cv2.GaussianBlur(f, (0, 0), 1.5) for f in reference])
    blur = lambda im: cv2.GaussianBlur(im, (11, 11), 1.5, borderType=cv2.BORDER_REFLECT)  # noqa: E731
    values = []
    for a, b in zip(reference, output, strict=True):
        x = cv2.cvtColor(a, cv2.COLOR_RGB2GRAY).astype(np.float64)
        y = cv2.cvtColor(b, cv2.COLOR_RGB2GRAY).astype(np.float64)
        mx, my = blur(x), blur(y)
        vx, vy, cxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
        c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
        values.append(((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2)))
    no_hole = np.zeros((48, 64), dtype=np.uint8)
    assert masked_ssim(reference, output, no_hole) == pytest.approx(float(np.mean(values)), abs=1e-9)


# ---------------------------------------------------------------------------------------------------------- temporal
def test_warp_error_rises_with_flicker() -> None:
    clean = translating_texture(5)
    flickering = with_flicker(clean)
    for method in ("farneback", "dis"):
        steady, unsteady = warp_error(clean, method), warp_error(flickering, method)  # type: ignore[arg-type]
        assert steady < 4.0, method
        assert unsteady > steady + 15, method  # ±12 levels → about 24 per pair


def test_flicker_measures_brightness_jumps_and_vbench_frame_differences() -> None:
    clean = translating_texture(5)
    flickering = with_flicker(clean)
    assert flicker(clean) < 1.0
    assert flicker(flickering) == pytest.approx(24.0, abs=1.5)
    static = np.repeat(clean[:1], 4, axis=0)
    assert temporal_flickering(static) == 1.0
    assert temporal_flickering(flickering) < temporal_flickering(clean) < 1.0


def test_motion_smoothness_prefers_smooth_motion() -> None:
    smooth = translating_texture(9)
    shuffled = smooth[np.random.default_rng(3).permutation(len(smooth))]
    assert motion_smoothness(smooth) > 0.98
    assert motion_smoothness(smooth) > motion_smoothness(shuffled) + 0.05
    with pytest.raises(BadInput, match="at least 3"):
        motion_smoothness(smooth[:2])


def test_dynamic_degree_zero_when_static_positive_when_moving() -> None:
    moving = translating_texture(5, dx=5.0, dy=0.0)  # 5 px/frame > 6 · 72/256 = 1.7 px
    static = np.repeat(moving[:1], 5, axis=0)
    assert dynamic_degree(static) == 0.0
    assert dynamic_degree(moving) > 0.0
    assert dynamic_degree(moving, threshold=100.0) == 0.0  # the threshold is what decides
    assert vbench_is_dynamic(moving, fps=8.0) and not vbench_is_dynamic(static, fps=8.0)


def test_flow_frames_shrinks_to_a_256_short_side() -> None:
    big = np.zeros((2, 300, 512, 3), dtype=np.uint8)
    assert flow_frames(big).shape == (2, 256, 437, 3)
    small = np.zeros((2, 64, 96, 3), dtype=np.uint8)
    assert flow_frames(small) is small


# ----------------------------------------------------------------------------------------------------------- audio
def _bursts(seconds: float, sample_rate: int, seed: int) -> np.ndarray:
    """Noise bursts of random length at random times, [2, N]."""
    rng = np.random.default_rng(seed)
    n = int(seconds * sample_rate)
    gain = np.zeros(n)
    start = 0
    while start < n:
        start += int(rng.uniform(0.05, 0.4) * sample_rate)
        length = int(rng.uniform(0.03, 0.25) * sample_rate)
        gain[start : start + length] = rng.uniform(0.2, 0.9)
        start += length
    noise = rng.standard_normal((2, n)) * 0.3
    return (noise * gain).astype(np.float32)


def test_audio_envelope_correlation() -> None:
    sample_rate = 16_000
    audio = _bursts(4.0, sample_rate, seed=0)
    assert audio_envelope_correlation(audio, 0.3 * audio, sample_rate) > 0.999
    shifted = np.roll(audio, sample_rate, axis=1)  # the same bursts, 1 s later
    assert abs(audio_envelope_correlation(audio, shifted, sample_rate)) < 0.3
    with pytest.raises(BadInput, match="constant"):
        audio_envelope_correlation(audio, np.zeros_like(audio), sample_rate)


# -------------------------------------------------------------------------------------------------- contact sheet
def test_contact_sheet_size_and_content(tmp_path: Path) -> None:
    output = np.zeros((10, 60, 80, 3), dtype=np.uint8)
    output[..., 0] = 200  # red
    control = np.zeros((10, 30, 40, 3), dtype=np.uint8)
    control[..., 2] = 200  # blue, half size
    path = tmp_path / "sheet.png"
    assert contact_sheet(path, [("control", control), ("output", output)], n_columns=4) == path

    image = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    # tiles 60 px high (the tallest video), 80 px wide for both rows; 4 tiles + gaps per row, 2 labelled rows.
    width = SHEET_GAP + 4 * (80 + SHEET_GAP)
    height = 2 * (SHEET_LABEL_HEIGHT + 60 + SHEET_GAP) + SHEET_GAP
    assert image.shape == (height, width, 3)
    row1_top = SHEET_GAP + SHEET_LABEL_HEIGHT
    row2_top = row1_top + 60 + SHEET_GAP + SHEET_LABEL_HEIGHT
    assert tuple(image[row1_top + 30, SHEET_GAP + 40]) == (0, 0, 200)  # control row first, upscaled
    assert tuple(image[row2_top + 30, width - SHEET_GAP - 40]) == (200, 0, 0)  # last output tile

    captioned = tmp_path / "captioned.png"
    contact_sheet(captioned, [("output", output)], n_columns=3, caption="edge_f1=0.91  warp_error=2.3")
    image = cv2.imread(str(captioned))
    assert image.shape[:2] == (SHEET_LABEL_HEIGHT + 60 + 2 * SHEET_GAP + SHEET_CAPTION_LINE_HEIGHT + SHEET_GAP,
                               SHEET_GAP + 3 * (80 + SHEET_GAP))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["captioned.png", "sheet.png"]  # no temp files left


# ------------------------------------------------------------------------------------------------------ evaluation
@pytest.fixture
def canny_pair(tmp_path: Path) -> tuple[Path, Path]:
    """A half-size lossless canny control and an H.264 "generated" output one frame longer."""
    source = synthetic_frames(9, 96, 64)
    control = tmp_path / "data" / "reference" / "clip.mp4"
    write_video(control, canny_control(source[:8], 2), 12.0, lossless=True)
    output = tmp_path / "runs" / "out.mp4"
    write_video(output, source, 12.0)
    return control, output


def test_evaluate_pair_canny_and_depth(canny_pair: tuple[Path, Path], tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AVCTL_HOME", raising=False)
    control, output = canny_pair
    result = evaluate_pair("canny", control, output)
    assert set(result) >= {"modality", "control", "video", "metrics", "not_available"}
    assert result["modality"] == "canny" and result["video"] == str(output)
    assert result["compared"] == {"video_frames": 9, "control_frames": 8, "frames": 8, "width": 48, "height": 32,
                                  "flow_width": 96, "flow_height": 64, "chance": {"edge_f1": "mirrored"}}
    assert 0.7 < result["metrics"]["edge_f1"] <= 1.0
    assert result["metrics"]["edge_f1_skill"] > 0.5 and result["metrics"]["edge_f1_chance"] < 0.7
    assert set(TEMPORAL) <= set(result["metrics"])
    assert set(VBENCH_NOT_AVAILABLE) <= set(result["not_available"])
    json.dumps(result)  # serialisable as it is

    empty = tmp_path / "no-weights"
    empty.mkdir()
    depth = evaluate_pair("depth", control, output, weights=empty)
    assert {"depth_correlation", "depth_aligned_rmse"} <= set(depth["not_available"])
    assert "edge_f1" not in depth["metrics"] and "depth_correlation" not in depth["metrics"]
    assert "huggingface-cli download" in depth["not_available"]["depth_correlation"]
    assert set(TEMPORAL) <= set(depth["metrics"])


def test_plain_edges_judge_a_thick_line_control_by_the_clip_s_own_edges(tmp_path: Path) -> None:
    """edge_f1_plain compares the output with the source's 1-px edges, not with the (generous) thick-line control."""
    source_frames = synthetic_frames(8, 96, 64)
    source = tmp_path / "clip.mp4"
    write_video(source, source_frames, 12.0, lossless=True)
    thick = CannyExtractor(line_width=5)(Clip(frames=source_frames, fps=12.0, key="clip", seed=0,
                                              reference_size=(32, 48))).frames
    control = tmp_path / "control.mp4"
    write_video(control, thick, 12.0, lossless=True)
    blurred_frames = np.stack([cv2.GaussianBlur(f, (0, 0), 3) for f in source_frames])
    faithful, blurred = tmp_path / "faithful.mp4", tmp_path / "blurred.mp4"
    write_video(faithful, source_frames, 12.0, lossless=True)
    write_video(blurred, blurred_frames, 12.0, lossless=True)

    assert plain_canny_f1(source, thick, source_frames) > 0.9  # the clip's own edges
    assert plain_canny_f1(source, thick, source_frames) > plain_canny_f1(source, thick, blurred_frames) + 0.3
    with_source = evaluate_pair("canny", control, faithful, source=source)
    assert with_source["metrics"]["edge_f1_plain"] > 0.9
    assert with_source["metrics"]["edge_f1_plain"] != with_source["metrics"]["edge_f1"]
    without = evaluate_pair("canny", control, blurred)
    assert "edge_f1_plain" not in without["metrics"] and "--source" in without["not_available"]["edge_f1_plain"]


def test_sheet_rows_put_each_clip_s_outputs_under_its_own_control(tmp_path: Path) -> None:
    first, second = synthetic_frames(4, 32, 32, seed=1), synthetic_frames(4, 32, 32, seed=2)
    results = []
    for name, control in (("a_s000", first), ("a_s100", first), ("b_s000", second)):
        path = tmp_path / f"{name}.control-1.mp4"
        write_video(path, control, 12.0, lossless=True)
        write_video(tmp_path / f"{name}.mp4", control, 12.0, lossless=True)
        results.append({"video": str(tmp_path / f"{name}.mp4"), "control": str(path), "strength": 0.0,
                        "metrics": {"edge_f1": 0.5}})
    results.insert(1, {"video": str(tmp_path / "x.mp4"), "skipped": "no sidecar"})
    rows, labels = sheet_rows(results)
    assert [label for label, _ in rows] == ["control", "a_s000 s=0.0", "a_s100 s=0.0", "control", "b_s000 s=0.0"]
    assert np.abs(rows[0][1].astype(int) - first).max() <= 2 and np.abs(rows[3][1].astype(int) - second).max() <= 2
    assert [label for label, _ in labels] == ["a_s000 s=0.0", "a_s100 s=0.0", "b_s000 s=0.0"]


def test_evaluate_pair_inpaint_needs_a_mask(tmp_path: Path) -> None:
    source = synthetic_frames(6, 64, 48)
    hole = np.zeros((6, 48, 64), dtype=np.uint8)
    hole[:, 8:24, 16:40] = 255
    control_frames = source.copy()
    control_frames[hole > 0] = (0x66, 0xFF, 0x00)
    control, mask, output = tmp_path / "control.mp4", tmp_path / "mask.mp4", tmp_path / "out.mp4"
    write_video(control, control_frames, 12.0, lossless=True)
    write_video(mask, np.repeat(hole[..., None], 3, axis=-1), 12.0, lossless=True)
    write_video(output, source, 12.0, lossless=True)

    with pytest.raises(BadInput, match="mask"):
        evaluate_pair("inpaint", control, output)
    result = evaluate_pair("inpaint", control, output, mask=mask)
    assert result["metrics"]["masked_psnr"] == float("inf")  # identical outside the hole
    assert result["metrics"]["masked_ssim"] == pytest.approx(1.0)

    png = tmp_path / "mask.png"
    cv2.imwrite(str(png), hole[0])
    assert evaluate_pair("inpaint", control, output, mask=png)["metrics"]["masked_psnr"] == float("inf")


def test_evaluate_runs_reads_sidecars(canny_pair: tuple[Path, Path]) -> None:
    control, output = canny_pair
    runs = output.parent
    sidecar = {"video": str(output), "modality": ["canny"], "control": [f"canny={control}"], "strength": 0.5,
               "seed": 7, "loras": [{"path": "runs/canny/lora.safetensors", "scale": 1.0, "downscale": 2}]}
    output.with_suffix(".json").write_text(json.dumps(sidecar))
    write_video(runs / "loose.mp4", synthetic_frames(4, 64, 48), 12.0)

    rows = evaluate_runs(runs)
    assert [Path(r["video"]).name for r in rows] == ["loose.mp4", "out.mp4"]
    assert "sidecar" in rows[0]["skipped"]
    row = rows[1]
    assert row["strength"] == 0.5 and row["seed"] == 7 and row["modality"] == "canny"
    assert row["control"] == str(control) and 0.7 < row["metrics"]["edge_f1"] <= 1.0
    with pytest.raises(BadInput, match="not a folder"):
        evaluate_runs(runs / "missing")


def test_evaluate_runs_scores_plain_edges_against_the_recorded_from_video(canny_pair: tuple[Path, Path]) -> None:
    control, output = canny_pair
    runs = output.parent
    source = runs.parent / "source.mp4"
    write_video(source, synthetic_frames(9, 96, 64), 12.0, lossless=True)
    lost = runs / "lost.mp4"
    shutil.copy(output, lost)
    for video, recorded in ((output, str(source)), (lost, str(runs.parent / "moved.mp4"))):
        sidecar = {"video": str(video), "modality": ["canny"], "control": [str(control)], "from_video": recorded}
        video.with_suffix(".json").write_text(json.dumps(sidecar))

    found, missing = sorted(evaluate_runs(runs), key=lambda r: Path(r["video"]).name != "out.mp4")
    assert found["metrics"]["edge_f1_plain"] > 0.7  # the output is the source clip itself
    assert "edge_f1_plain" not in missing["metrics"]
    assert "moved.mp4" in missing["not_available"]["edge_f1_plain"] and "not found" in missing["not_available"][
        "edge_f1_plain"]


def test_evaluate_runs_finds_the_inpaint_mask_of_a_prepared_dataset(tmp_path: Path) -> None:
    source = synthetic_frames(4, 64, 48)
    hole = np.zeros((4, 48, 64), dtype=np.uint8)
    hole[:, 8:24, 16:40] = 255
    reference = source.copy()
    reference[hole > 0] = (0x66, 0xFF, 0x00)
    control = tmp_path / "data" / "reference" / "a" / "clip.mp4"
    write_video(control, reference, 12.0, lossless=True)
    write_video(tmp_path / "data" / "mask" / "a" / "clip.mp4", np.repeat(hole[..., None], 3, -1), 12.0, lossless=True)
    runs = tmp_path / "runs"
    write_video(runs / "with_mask.mp4", source, 12.0, lossless=True)
    (runs / "with_mask.json").write_text(json.dumps({"modality": ["inpaint"], "control": [str(control)]}))
    orphan = tmp_path / "elsewhere" / "clip.mp4"  # the same control outside a dataset layout: no mask to find
    orphan.parent.mkdir()
    shutil.copyfile(control, orphan)
    shutil.copyfile(runs / "with_mask.mp4", runs / "without_mask.mp4")
    (runs / "without_mask.json").write_text(json.dumps({"modality": ["inpaint"], "control": [str(orphan)]}))

    with_mask, without_mask = evaluate_runs(runs)
    assert with_mask["metrics"]["masked_psnr"] == float("inf")
    assert "masked_psnr" not in without_mask["metrics"]
    assert "no mask found" in without_mask["not_available"]["masked_psnr"]
    assert "warp_error" in without_mask["metrics"]  # the rest is still evaluated


def test_lowres_psnr_and_colour_histogram_correlation() -> None:
    from avctl.metrics import colour_histogram_correlation, lowres_psnr

    frames = synthetic_frames(3, 64, 64, seed=1)
    assert lowres_psnr(frames, frames, 4) == float("inf")
    noisy = np.clip(frames.astype(int) + np.random.default_rng(0).integers(-40, 41, frames.shape), 0, 255)
    fine_noise = lowres_psnr(frames, noisy.astype(np.uint8), 4)
    assert fine_noise > lowres_psnr(frames, noisy.astype(np.uint8), 1)  # shrinking averages fine detail away
    assert colour_histogram_correlation(frames, frames[:, :, ::-1]) == pytest.approx(1.0)  # colours, not places
    red = np.zeros_like(frames)
    red[..., 0] = 255
    assert colour_histogram_correlation(frames, red) < 0.5
