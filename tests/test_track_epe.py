"""track_epe: the tracks control's fidelity metric (source tracks followed through the output with LK)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from avctl.errors import BadInput
from avctl.media import write_video
from avctl.metrics import evaluate_pair
from avctl.modalities.tracks import track_coordinates, track_epe, track_points, write_track_coordinates


def panning(frames: int, dx: float = 1.0, extra: float = 0.0, width: int = 96, height: int = 80) -> np.ndarray:
    """[F, H, W, 3] uint8: a smooth random texture panning by dx + extra pixels per frame in x."""
    rng = np.random.default_rng(3)
    small = rng.integers(0, 256, size=(height // 4 + 1, width // 4 + 1, 3)).astype(np.uint8)
    texture = cv2.resize(small, (width * 2, height * 2), interpolation=cv2.INTER_CUBIC).astype(np.float32)
    out = []
    for i in range(frames):
        shift = np.float32([[1, 0, -(dx + extra) * i - 8], [0, 1, -8]])
        out.append(cv2.warpAffine(texture, shift, (width, height), flags=cv2.INTER_LINEAR))
    return np.clip(np.rint(np.stack(out)), 0, 255).astype(np.uint8)


def test_track_coordinates_match_the_extractor_tracker(tmp_path: Path) -> None:
    frames = panning(6)
    points, alive = track_coordinates(frames)
    tracks = track_points(frames)
    assert points.shape == (6, len(tracks.points), 2) and points.dtype == np.float32
    assert alive.shape == (6, len(tracks.points)) and alive.dtype == bool
    np.testing.assert_array_equal(points, tracks.points.transpose(1, 0, 2))
    path = write_track_coordinates(tmp_path / "tracks.npz", frames)
    with np.load(path) as saved:
        np.testing.assert_array_equal(saved["points"], points)
        np.testing.assert_array_equal(saved["alive"], alive)
    assert [p.name for p in tmp_path.iterdir()] == ["tracks.npz"]  # no temp file left behind


def test_track_epe_identical_is_near_zero() -> None:
    frames = panning(10)
    assert track_epe(frames, frames) < 0.5


def test_track_epe_grows_with_an_extra_translation() -> None:
    source = panning(10)
    output = panning(10, extra=2.0)
    same = track_epe(source, source)
    shifted = track_epe(source, output)
    assert shifted > 2.0 and shifted > same + 2.0
    assert track_epe(source[:5], output[:5]) < track_epe(source, output)  # drift accumulates with frame index


def test_track_epe_scales_to_the_output_size() -> None:
    frames = panning(8)
    bigger = np.stack([cv2.resize(f, (192, 160), interpolation=cv2.INTER_CUBIC) for f in frames])
    assert track_epe(frames, bigger) < 1.0


def test_track_epe_needs_two_frames() -> None:
    frames = panning(2)
    with pytest.raises(BadInput):
        track_epe(frames[:1], frames[:1])


def test_evaluate_pair_tracks(tmp_path: Path) -> None:
    source = panning(8)
    control = tmp_path / "control.mp4"
    write_video(control, np.zeros_like(source), 12.0)
    video = tmp_path / "out.mp4"
    write_video(video, source, 12.0)
    source_path = tmp_path / "source.mp4"
    write_video(source_path, source, 12.0)

    missing = evaluate_pair("tracks", control, video)
    assert "track_epe" in missing["not_available"] and "track_epe" not in missing["metrics"]
    assert "source" in missing["not_available"]["track_epe"]
    assert "control_fidelity" not in missing["not_available"]

    result = evaluate_pair("tracks", control, video, source=source_path)
    assert result["metrics"]["track_epe"] < 0.5
    assert "track_epe" not in result["not_available"]


def test_cli_eval_tracks_with_source(tmp_path):
    import json

    from typer.testing import CliRunner

    from avctl.cli import app
    from tests.conftest import write_synthetic_clip

    clip = write_synthetic_clip(tmp_path / "c.mp4", frames=9, width=128, height=96, fps=24.0)
    r = CliRunner().invoke(app, ["eval", "tracks", "--control", str(clip), "--video", str(clip), "--source", str(clip),
                                 "--json"], env={"AVCTL_NO_PROGRESS": "1"})
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["metrics"]["track_epe"] < 0.5
