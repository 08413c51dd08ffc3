"""Chance-corrected fidelity (`avctl.skill`): noise and flat frames score about 0, the source itself about 1."""

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from avctl.cli import app
from avctl.media import read_video, write_video
from avctl.metrics import edge_f1_at_output, evaluate_runs
from avctl.modalities.base import Clip
from avctl.modalities.canny import CannyExtractor
from avctl.skill import Fidelity, add_skill, derangement, mirror_video, mismatched, reverse_audio, skill
from tests.conftest import synthetic_frames, write_synthetic_clip

runner = CliRunner()


@pytest.fixture(scope="module")
def held_out(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A clip no test trains on, its canny control (half size, as `prepare canny` writes it), a uniform-noise video
    and a flat grey video of the clip's size."""
    root = tmp_path_factory.mktemp("skill")
    source = write_synthetic_clip(root / "held_out.mp4", frames=17, width=128, height=96, audio_channels=None, seed=3)
    frames = read_video(source).frames  # [F, H, W, 3]
    control = CannyExtractor()(Clip(frames=frames, fps=12.0, key="held_out", seed=0, reference_size=(48, 64))).frames
    write_video(root / "control.mp4", control, 12.0, lossless=True)
    write_video(root / "noise.mp4", np.random.default_rng(0).integers(0, 256, frames.shape, dtype=np.uint8), 12.0)
    write_video(root / "grey.mp4", np.full(frames.shape, 128, dtype=np.uint8), 12.0)
    return {"source": source, "control": root / "control.mp4", "noise": root / "noise.mp4", "grey": root / "grey.mp4"}


def _eval_json(held_out: dict[str, Path], video: Path) -> dict:
    r = runner.invoke(app, ["eval", "canny", "--control", str(held_out["control"]), "--video", str(video),
                            "--source", str(held_out["source"]), "--json"], env={"AVCTL_NO_PROGRESS": "1"})
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


@pytest.mark.parametrize("fake", ["noise", "grey"])
def test_noise_and_a_flat_frame_have_no_skill(held_out: dict[str, Path], fake: str) -> None:
    res = _eval_json(held_out, held_out[fake])
    metrics = res["metrics"]
    for name in ("edge_f1", "edge_f1_plain"):
        assert metrics[f"{name}_skill"] <= 0.05, (name, metrics)
        assert f"{name}_chance" in metrics and res["compared"]["chance"][name] == "mirrored"
    # edge_f1_plain is measured at the output's own size, not the 64×48 reference's
    assert (res["compared"]["plain_width"], res["compared"]["plain_height"]) == (128, 96)


def test_the_source_itself_has_full_skill(held_out: dict[str, Path]) -> None:
    metrics = _eval_json(held_out, held_out["source"])["metrics"]
    assert metrics["edge_f1_plain_skill"] >= 0.9 and metrics["edge_f1_skill"] >= 0.9
    assert metrics["edge_f1_plain_chance"] < 0.5  # the mirrored control is far from a perfect match


def test_skill_formulas() -> None:
    assert skill(1.0, 0.2) == 1.0 and skill(0.2, 0.2) == 0.0
    assert skill(0.6, 0.2) == pytest.approx(0.5)
    assert skill(0.1, 0.2) < 0  # worse than chance is negative, not clipped
    assert skill(0.9, 1.0) is None  # chance already perfect: undefined
    assert skill(0.0, 4.0, higher_is_better=False) == 1.0 and skill(4.0, 4.0, higher_is_better=False) == 0.0
    assert skill(1.0, 4.0, higher_is_better=False) == pytest.approx(0.75)
    assert skill(1.0, 0.0, higher_is_better=False) is None


def test_derangement_never_pairs_an_item_with_its_own_control() -> None:
    for n in range(2, 7):
        perm = derangement(n)
        assert sorted(perm) == list(range(n)) and all(perm[i] != i for i in range(n))
    with pytest.raises(ValueError):
        derangement(1)
    keys = ["a", "a", "b", "c", "b"]  # two outputs of a strength sweep share control "a"
    partners = mismatched(keys)
    for i, js in enumerate(partners):
        assert js and all(keys[j] != keys[i] for j in js)
        assert len({keys[j] for j in js}) == len(js) == 2  # each other control once
    assert mismatched(["a", "a"]) == [[], []]  # one control only: callers fall back to the mirror


def test_add_skill_uses_other_controls_in_a_set_and_the_mirror_alone() -> None:
    seen: list[tuple[int, int]] = []

    def metric(control: np.ndarray, output: np.ndarray) -> float:
        seen.append((int(control[0, 0, 0]), int(output[0, 0, 0])))
        return 0.25

    rows, pairs = [], []
    for i in range(3):
        ctrl = np.full((1, 2, 2), i)
        rows.append({"metrics": {"m": 0.75}, "not_available": {}})
        pairs.append({"m": Fidelity(metric, ctrl, ctrl.copy(), 0.75, key=i)})
    add_skill(rows, pairs)
    assert seen and all(c != o for c, o in seen)  # no output scored against its own control
    assert all(r["metrics"]["m_chance"] == 0.25 and r["metrics"]["m_skill"] == pytest.approx(2 / 3) for r in rows)
    assert list(rows[0]["metrics"]) == ["m", "m_skill", "m_chance"]
    assert rows[0]["compared"]["chance"]["m"] == "mismatched 2"

    alone = [{"metrics": {"m": 0.5}, "not_available": {}}]
    frames = np.arange(12).reshape(1, 2, 3, 2)
    add_skill(alone, [{"m": Fidelity(lambda c, o: float((c == o).mean()), frames, frames, 0.5, key="x")}])
    assert alone[0]["compared"]["chance"]["m"] == "mirrored"
    assert alone[0]["metrics"]["m_chance"] == pytest.approx(1 / 3)  # only the middle column survives the flip
    assert np.array_equal(mirror_video(frames)[0, :, 0], frames[0, :, 2])
    assert np.array_equal(reverse_audio(np.array([[1.0, 2.0, 3.0]])), np.array([[3.0, 2.0, 1.0]]))


def test_eval_runs_forms_chance_from_the_other_clips(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    runs.mkdir()
    for seed in (1, 2):
        clip = tmp_path / f"clip{seed}.mp4"
        frames = synthetic_frames(9, 96, 64, seed=seed)
        if seed == 2:  # conftest's clips share one layout; turn this one upside down so the two scenes differ
            frames = np.ascontiguousarray(frames[:, ::-1])
        write_video(clip, frames, 12.0, lossless=True)
        control = CannyExtractor()(Clip(frames=frames, fps=12.0, key="c", seed=0, reference_size=(32, 48))).frames
        write_video(tmp_path / f"control{seed}.mp4", control, 12.0, lossless=True)
        write_video(runs / f"out{seed}.mp4", frames, 12.0, lossless=True)
        (runs / f"out{seed}.json").write_text(json.dumps({
            "control": [str(tmp_path / f"control{seed}.mp4")], "modality": ["canny"], "from_video": str(clip)}))
    rows = evaluate_runs(runs)
    for row in rows:
        assert row["compared"]["chance"] == {"edge_f1": "mismatched 1", "edge_f1_plain": "mismatched 1"}
        assert row["metrics"]["edge_f1_plain_skill"] >= 0.9 and row["metrics"]["edge_f1_plain_chance"] < 0.6
        assert "_fidelity" not in row


def test_edge_f1_at_output_counts_tolerance_in_output_pixels() -> None:
    reference = np.zeros((1, 64, 64), dtype=bool)
    reference[0, :, 30] = True
    output = np.zeros((1, 64, 64, 3), dtype=np.uint8)
    output[0, :, 34:] = 255  # an edge about 3-4 px right of the reference line
    assert edge_f1_at_output(reference, output, tolerance_px=5) == 1.0
    assert edge_f1_at_output(reference, output, tolerance_px=1) == 0.0


def test_track_error_skill_is_one_when_followed_and_zero_when_static(tmp_path: Path) -> None:
    from avctl.metrics import evaluate_pair
    from tests.test_track_epe import panning

    source = panning(8)  # a texture panning 1 px per frame
    write_video(tmp_path / "source.mp4", source, 12.0)
    write_video(tmp_path / "control.mp4", np.zeros_like(source), 12.0)
    write_video(tmp_path / "static.mp4", np.repeat(source[:1], 8, axis=0), 12.0)
    followed = evaluate_pair("tracks", tmp_path / "control.mp4", tmp_path / "source.mp4",
                             source=tmp_path / "source.mp4")["metrics"]
    static = evaluate_pair("tracks", tmp_path / "control.mp4", tmp_path / "static.mp4",
                           source=tmp_path / "source.mp4")["metrics"]
    assert followed["track_epe_skill"] >= 0.9 and followed["track_epe_chance"] > 1.0  # the mirror pans the other way
    assert abs(static["track_epe_skill"]) <= 0.05


def test_envelope_correlation_skill_against_the_time_reversed_control(tmp_path: Path) -> None:
    from avctl.metrics import evaluate_pair

    rate = 16_000
    t = np.arange(2 * rate) / rate
    loud = (0.5 * np.clip(t - 0.3, 0.02, 1) * np.sin(2 * np.pi * 440 * t)).astype(np.float32)  # a swell
    noise = (0.1 * np.random.default_rng(0).standard_normal(len(t))).astype(np.float32)
    frames = np.zeros((24, 32, 32, 3), dtype=np.uint8)
    for name, audio in (("control", loud), ("same", loud), ("noise", noise)):
        write_video(tmp_path / f"{name}.mp4", frames, 12.0, audio=audio[None], sample_rate=rate)
    same = evaluate_pair("audio-intensity", tmp_path / "control.mp4", tmp_path / "same.mp4")["metrics"]
    noisy = evaluate_pair("audio-intensity", tmp_path / "control.mp4", tmp_path / "noise.mp4")["metrics"]
    assert same["audio_envelope_correlation_skill"] >= 0.9
    assert abs(noisy["audio_envelope_correlation_skill"]) <= 0.2
