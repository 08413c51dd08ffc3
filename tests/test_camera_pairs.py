"""camera-video pairs from plain videos: `avctl prepare camera-video DIR` estimates depth and cameras, samples a
source camera path per clip and re-renders (double reprojection), end to end on procedural world clips."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from avctl import camera as C
from avctl.cli import app
from avctl.errors import MissingWeights
from avctl.media import read_video
from avctl.modalities.camera_video import pair_reference, sample_source_path
from avctl.world import write_world_dataset

runner = CliRunner()


def _holes(frames: np.ndarray) -> np.ndarray:
    return np.all(np.abs(frames.astype(np.int16) - np.array(C.HOLE_COLOUR, np.int16)) <= 8, axis=-1)


@pytest.fixture
def no_depth_model(monkeypatch):
    """No depth weights here, whatever the local cache holds: clips without depth files must be skipped."""
    import avctl.modalities.depth as depth

    def missing(*args, **kwargs):
        raise MissingWeights("no depth-anything-v2 depth weights (test)")

    monkeypatch.setattr(depth, "depth_extractor", missing)


def test_prepare_camera_video_builds_pairs_from_plain_world_videos(tmp_path: Path, no_depth_model) -> None:
    clips = tmp_path / "clips"
    write_world_dataset(clips, 2, seed=3, size=64, frames=9, truth=True)
    # a third clip with no depth anywhere: skipped with the reason
    lone = write_world_dataset(tmp_path / "other", 1, seed=3, size=64, frames=9, start=2)[0]
    shutil.copy(lone, clips / lone.name)
    # the first clip's cameras from a sidecar (a locked-off camera): used instead of the estimate
    C.save_trajectory(C.preset("static", 9), clips / "world_0000.camera.json")
    (clips / "world_0001.camera.json").unlink()  # the second clip's cameras are estimated
    out = tmp_path / "ds"
    r = runner.invoke(app, ["prepare", "camera-video", str(clips), "--out", str(out), "--bucket", "64x64x9"],
                      env={"AVCTL_NO_PROGRESS": "1"})
    assert r.exit_code == 0, r.output
    assert "2 new samples from 3 inputs (1 skipped" in r.output
    assert "depth: world truth ×2" in r.output and "<clip>.camera.json ×1" in r.output
    rows = [json.loads(line) for line in (out / "dataset.jsonl").read_text().splitlines()]
    assert sorted(row["video"] for row in rows) == ["video/world_0000.mp4", "video/world_0001.mp4"]
    info = json.loads((out / "avctl.json").read_text())
    assert info["extractor"]["backend"] == "rerender"

    r = runner.invoke(app, ["prepare", "camera-video", str(clips), "--out", str(out), "--bucket", "64x64x9",
                            "--json"], env={"AVCTL_NO_PROGRESS": "1"})
    summary = json.loads(r.stdout)
    assert summary["existing"] == ["world_0000", "world_0001"] and summary["inputs"] == 3
    assert "no depth" in summary["skipped"][0]["reason"] and summary["skipped"][0]["clip"] == "world_0002"

    r = runner.invoke(app, ["prepare", "camera-video", str(clips), "--out", str(out), "--bucket", "64x64x9",
                            "--variants", "2", "--json"], env={"AVCTL_NO_PROGRESS": "1"})
    summary = json.loads(r.stdout)
    assert summary["done"] == ["world_0000.v1", "world_0001.v1"] and len(summary["existing"]) == 2
    rows = [json.loads(line) for line in (out / "dataset.jsonl").read_text().splitlines()]
    assert len(rows) == 4
    first = [read_video(out / f"reference/world_0001{v}.mp4").frames for v in ("", ".v1")]
    assert not np.array_equal(*first)  # another sampled source path

    last_holes = []
    for row in rows:
        target = read_video(out / row["video"]).frames
        reference = read_video(out / row["reference_video"]).frames
        holes = _holes(reference)
        assert reference.shape == target.shape
        assert holes[0].mean() < 0.01  # frame 0: the source path starts at the target's camera
        last_holes.append(holes[-1].mean())
        # off the holes the reference shows the target's own content, seen from the target's camera
        assert np.abs(reference.astype(float) - target.astype(float)).mean(-1)[~holes].mean() < 8
    assert max(last_holes) > 0.05  # the paths part: the source misses some of what the target sees


def test_pair_reference_geometry() -> None:
    """A source camera on the target's own path gives the target back; one panned right misses the target's left
    side, which the reference leaves as holes."""
    rng = np.random.default_rng(0)
    frames = (rng.random((3, 48, 64, 3)) * 200).astype(np.uint8)  # no pixel near the hole colour
    depth = np.ones((3, 48, 64), np.float32)
    same = pair_reference(frames, depth, C.preset("static", 3), None, (48, 64))
    assert _holes(same).mean() == 0 and np.abs(same.astype(int) - frames.astype(int)).max() <= 1
    panned = pair_reference(frames, depth, C.preset("pan-right", 3), C.preset("static", 3), (48, 64))
    holes = _holes(panned[-1])
    assert holes[:, :8].mean() > 0.9 and holes[:, -8:].mean() == 0


def test_source_path_is_seeded_per_clip() -> None:
    a, again = sample_source_path(42, "a.mp4", 9), sample_source_path(42, "a.mp4", 9)
    assert a.name == again.name != "static" and np.array_equal(a.translations, again.translations)
    drawn = {(p.name, round(float(np.abs(p.translations).sum() + p.fov.sum()), 6))
             for p in (sample_source_path(s, k, 9) for s in (1, 2) for k in ("a.mp4", "b.mp4", "c.mp4"))}
    assert len(drawn) > 1


def test_generate_from_video_does_not_run_the_pair_builder() -> None:
    """camera-video's extractor builds training pairs along a random path; a generation control comes from --camera
    (or --control), so --from-video alone is refused as before."""
    from types import SimpleNamespace

    from avctl.errors import BadUsage
    from avctl.sample import control_from_video

    lora = SimpleNamespace(avctl={"modality": "camera-video"}, path=Path("cam.safetensors"), downscale=1)
    frames = np.zeros((9, 64, 64, 3), np.uint8)
    with pytest.raises(BadUsage, match="no extractor for generation"):
        control_from_video(lora, frames, 24.0, width=64, height=64, frames=9, seed=0, key="s")


def test_variants_are_refused_for_manifest_pairs(tmp_path: Path) -> None:
    from avctl.errors import BadUsage
    from avctl.media import Bucket
    from avctl.modalities.base import get_modality
    from avctl.prepare import prepare

    with pytest.raises(BadUsage, match="--variants"):
        prepare(get_modality("camera-video"), [tmp_path / "pairs.jsonl"], tmp_path / "d", Bucket(64, 64, 9), None,
                variants=2)
