"""`prepare` and the dataset manifest: layout, resume, interruption, workers, bad clips, checks."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from avctl.dataset import check_dataset, default_bucket, load_manifest
from avctl.errors import BadInput, BadUsage, MissingWeights
from avctl.media import Bucket, probe, read_audio, read_video
from avctl.modalities.base import Clip, Control, get_modality
from avctl.prepare import AUDIO_SAMPLE_RATE, PrepareSummary, find_sources, prepare
from tests.conftest import write_synthetic_clip

BUCKET = Bucket(64, 64, 9)


def _inputs(root: Path) -> Path:
    """a/x.mp4 (audio + sidecar caption), b/x.mp4 (no audio), c.mov, a 4-frame clip and a corrupt file."""
    write_synthetic_clip(root / "a" / "x.mp4", frames=12, width=96, height=64, fps=12.0, seed=1)
    (root / "a" / "x.txt").write_text("  a red box moves right \n")
    write_synthetic_clip(root / "b" / "x.mp4", frames=10, width=64, height=96, fps=10.0, audio_channels=None, seed=2)
    write_synthetic_clip(root / "c.mov", frames=9, width=80, height=64, fps=12.0, seed=3)
    write_synthetic_clip(root / "short.mp4", frames=4, width=64, height=64)
    (root / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypisom" + b"\x00" * 64)
    return root


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _inputs(tmp_path_factory.mktemp("videos"))


def _snapshot(out: Path) -> dict[str, bytes]:
    """Every file of a dataset folder, by relative path."""
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "dataset.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def clean_run(videos: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, PrepareSummary, list]:
    """One uninterrupted single-worker inpaint run: (dataset folder, summary, progress calls). Tests must not
    modify the folder."""
    out = tmp_path_factory.mktemp("clean") / "ds"
    calls: list[tuple[int, int]] = []
    summary = prepare(get_modality("inpaint"), [videos], out, BUCKET, "fallback caption",
                      progress=lambda done, total: calls.append((done, total)))
    return out, summary, calls


@pytest.fixture
def clean_inpaint(clean_run: tuple[Path, PrepareSummary, list], tmp_path: Path) -> Path:
    """A private copy of the clean run's dataset."""
    copy = tmp_path / "clean_copy"
    shutil.copytree(clean_run[0], copy)
    return copy


def test_layout_manifest_and_summary(videos: Path, clean_run: tuple[Path, PrepareSummary, list]) -> None:
    out, summary, calls = clean_run
    assert summary.done == ["a/x", "b/x", "c"] and summary.rows == 3 and summary.failed == []
    skipped = {item["clip"]: item["reason"] for item in summary.skipped}
    assert set(skipped) == {"broken", "short"}
    assert "4 frames, the bucket needs 9" in skipped["short"] and str(videos / "broken.mp4") in skipped["broken"]
    assert calls == [(0, 5), (1, 5), (2, 5), (3, 5), (4, 5), (5, 5)]
    assert json.loads(json.dumps(summary.to_dict()))["done"] == ["a/x", "b/x", "c"]

    rows = _rows(out)
    assert [r["video"] for r in rows] == ["video/a/x.mp4", "video/b/x.mp4", "video/c.mp4"]
    assert rows[0] == {"video": "video/a/x.mp4", "caption": "a red box moves right",
                       "reference_video": "reference/a/x.mp4", "reference_mask": "mask/a/x.mp4", "fps": 12.0}
    assert rows[1]["caption"] == "fallback caption" and rows[1]["fps"] == 10.0

    target = read_video(out / "video/a/x.mp4")
    assert target.frames.shape == (9, 64, 64, 3)
    audio = read_audio(out / "video/a/x.mp4", AUDIO_SAMPLE_RATE)
    assert audio is not None and abs(audio.shape[1] / AUDIO_SAMPLE_RATE - 9 / 12) <= 0.040
    assert not probe(out / "video/b/x.mp4").has_audio  # a silent source gives a silent target
    reference = read_video(out / "reference/a/x.mp4").frames
    mask = read_video(out / "mask/a/x.mp4").frames[..., 0] > 127
    assert np.abs(reference[mask].astype(int) - (0x66, 0xFF, 0x00)).max() <= 3  # lossless: the green stays green
    assert 0.08 <= mask.mean() <= 0.62

    info, loaded = load_manifest(out)
    assert loaded == rows
    assert info["modality"] == "inpaint" and info["bucket"] == "64x64x9" and info["downscale"] == 1
    assert info["extractor"]["backend"] == "random-masks" and info["avctl_version"]
    assert check_dataset(info, get_modality("inpaint")) == BUCKET


def test_rerun_is_idempotent(videos: Path, clean_inpaint: Path) -> None:
    before = _snapshot(clean_inpaint)
    mtimes = {p: p.stat().st_mtime_ns for p in clean_inpaint.rglob("*.mp4")}
    summary = prepare(get_modality("inpaint"), [videos], clean_inpaint, BUCKET, "fallback caption")
    assert summary.done == [] and summary.existing == ["a/x", "b/x", "c"] and summary.rows == 3
    assert _snapshot(clean_inpaint) == before
    assert {p: p.stat().st_mtime_ns for p in clean_inpaint.rglob("*.mp4")} == mtimes  # nothing re-encoded


def test_interrupted_run_resumes_to_the_clean_result(videos: Path, clean_inpaint: Path, tmp_path: Path) -> None:
    out = tmp_path / "ds"

    def stop_after_first(done: int, total: int) -> None:
        if done >= 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        prepare(get_modality("inpaint"), [videos], out, BUCKET, "fallback caption", progress=stop_after_first)
    rows = _rows(out)
    assert [r["video"] for r in rows] == ["video/a/x.mp4"]  # only the finished sample, with all its files
    assert all((out / r[c]).is_file() for r in rows for c in ("video", "reference_video", "reference_mask"))

    summary = prepare(get_modality("inpaint"), [videos], out, BUCKET, "fallback caption")
    assert summary.existing == ["a/x"] and summary.done == ["b/x", "c"]
    assert _snapshot(out) == _snapshot(clean_inpaint)


def test_workers_do_not_change_the_dataset(videos: Path, clean_inpaint: Path, tmp_path: Path) -> None:
    out = tmp_path / "ds"
    summary = prepare(get_modality("inpaint"), [videos], out, BUCKET, "fallback caption", workers=2)
    assert summary.done == ["a/x", "b/x", "c"] and {s["clip"] for s in summary.skipped} == {"broken", "short"}
    assert _snapshot(out) == _snapshot(clean_inpaint)


def test_a_different_dataset_in_out_needs_overwrite(videos: Path, tmp_path: Path) -> None:
    out = tmp_path / "ds"
    clip = videos / "c.mov"
    prepare(get_modality("detail"), [clip], out, BUCKET, None)
    for modality, bucket in ((get_modality("inpaint"), BUCKET), (get_modality("detail"), Bucket(96, 64, 9))):
        with pytest.raises(BadInput, match="--overwrite"):
            prepare(modality, [clip], out, bucket, None)
    summary = prepare(get_modality("inpaint"), [clip], out, BUCKET, None, overwrite=True)
    assert summary.done == ["c"]
    info, rows = load_manifest(out)
    assert info["modality"] == "inpaint" and "reference_mask" in rows[0]
    with pytest.raises(BadInput, match="prepared for 'inpaint', not 'detail'"):
        check_dataset(info, get_modality("detail"))
    with pytest.raises(BadInput, match="bucket 64x64x9, not 128x128x17"):
        check_dataset(info, get_modality("inpaint"), Bucket(128, 128, 17))


def test_refusals_are_clear(videos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    clip = [videos / "c.mov"]
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-hf-cache"))
    monkeypatch.delenv("AVCTL_HOME", raising=False)
    with pytest.raises(MissingWeights, match="Depth-Anything-V2-Small-hf"):  # at once, before any clip
        prepare(get_modality("depth"), clip, tmp_path / "d", Bucket(128, 128, 9), None)
    with pytest.raises(BadInput, match="prepare for 'local-edit' needs a pairs manifest"):
        prepare(get_modality("local-edit"), clip, tmp_path / "e", BUCKET, None)
    with pytest.raises(BadUsage, match="width 96 is not a multiple of 64"):
        prepare(get_modality("canny"), clip, tmp_path / "c", Bucket(96, 64, 9), None)
    with pytest.raises(BadUsage, match="frames 10"):
        prepare(get_modality("inpaint"), clip, tmp_path / "c", Bucket(64, 64, 10), None)
    with pytest.raises(BadInput, match="no such file or folder"):
        prepare(get_modality("inpaint"), [tmp_path / "nowhere"], tmp_path / "c", BUCKET, None)
    (tmp_path / "empty").mkdir()
    with pytest.raises(BadInput, match="no videos found"):
        prepare(get_modality("inpaint"), [tmp_path / "empty"], tmp_path / "c", BUCKET, None)
    assert not (tmp_path / "d").exists() and not (tmp_path / "c").exists()


def test_only_bad_clips_prepare_nothing(videos: Path, tmp_path: Path) -> None:
    summary = prepare(get_modality("inpaint"), [videos / "short.mp4", videos / "broken.mp4"], tmp_path / "ds",
                      BUCKET, None)
    assert summary.rows == 0 and summary.done == [] and len(summary.skipped) == 2
    # nothing completed: no avctl.json and no empty manifest that would block another modality in this folder
    assert not (tmp_path / "ds" / "avctl.json").exists() and not (tmp_path / "ds" / "dataset.jsonl").exists()
    with pytest.raises(BadInput, match="missing"):
        load_manifest(tmp_path / "ds")


def test_sources_keep_relative_paths_apart(tmp_path: Path) -> None:
    for name in ("one/x.mp4", "two/x.mp4", "two/x.webm", "two/.hidden.mp4", "two/notes.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    sources, clashes = find_sources([tmp_path / "one", tmp_path / "two"])
    assert [s.rel for s in sources] == ["one/x", "two/x"]
    assert [c["clip"] for c in clashes] == ["two/x.webm"] and "rename" in clashes[0]["reason"]
    sources, _ = find_sources([tmp_path / "one" / "x.mp4", tmp_path / "two" / "x.mp4"])
    assert [s.rel for s in sources] == ["one/x", "two/x"]
    with pytest.raises(BadInput, match="no videos found"):
        find_sources([tmp_path / "two"], out=tmp_path / "two")  # its own output folder is not an input


def test_load_manifest_names_what_is_wrong(clean_inpaint: Path, tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="no such dataset folder"):
        load_manifest(tmp_path / "missing")
    broken = tmp_path / "ds"
    broken.mkdir()
    with pytest.raises(BadInput, match=r"avctl\.json: missing"):
        load_manifest(broken)
    (broken / "avctl.json").write_text((clean_inpaint / "avctl.json").read_text())
    with pytest.raises(BadInput, match=r"dataset\.jsonl: missing"):
        load_manifest(broken)
    (broken / "dataset.jsonl").write_text((clean_inpaint / "dataset.jsonl").read_text())
    with pytest.raises(BadInput, match=r"dataset\.jsonl:1: missing file .*video/a/x\.mp4"):
        load_manifest(broken)
    (broken / "dataset.jsonl").write_text("{not json\n")
    with pytest.raises(BadInput, match=r"dataset\.jsonl:1: not valid JSON"):
        load_manifest(broken)


class _ToneExtractor:
    """A test extractor with an audio reference (the general path later audio modalities use)."""

    backend = "test-tone"
    version = "1"

    def __call__(self, clip: Clip) -> Control:
        assert clip.audio is not None and clip.sample_rate == AUDIO_SAMPLE_RATE
        return Control(audio=clip.audio[:, ::3] * 0.5, sample_rate=clip.sample_rate // 3)


class _BrokenExtractor:
    backend = "test-broken"
    version = "1"

    def __call__(self, clip: Clip) -> Control:
        if clip.key.startswith("a/"):
            raise RuntimeError("model exploded")
        return Control(frames=np.zeros((len(clip.frames), 8, 8, 3), np.uint8))  # wrong size


def test_audio_references_and_extractor_failures(videos: Path, tmp_path: Path) -> None:
    base = get_modality("speech-ambient")
    tone_modality = replace(base, name="test-tone", extractor=_ToneExtractor)
    summary = prepare(tone_modality, [videos / "a" / "x.mp4"], tmp_path / "tone", BUCKET, None)
    assert summary.done == ["x"]
    row = _rows(tmp_path / "tone")[0]
    assert row["reference_audio"] == "reference/x.wav" and "reference_video" not in row
    reference = read_audio(tmp_path / "tone" / row["reference_audio"], 16_000)
    assert reference is not None and abs(reference.shape[1] / 16_000 - 9 / 12) <= 0.01

    broken = replace(get_modality("canny"), name="test-broken", extractor=_BrokenExtractor)
    summary = prepare(broken, [videos / "a", videos / "c.mov"], tmp_path / "broken", BUCKET, None)
    reasons = {item["clip"]: item["reason"] for item in summary.failed}
    assert summary.rows == 0 and set(reasons) == {"a/x", "c"}
    assert "RuntimeError: model exploded" in reasons["a/x"] and "expected uint8 (9, 32, 32, 3)" in reasons["c"]


def test_default_bucket() -> None:
    assert default_bucket("tiny") == Bucket(128, 128, 17)
    assert default_bucket(None) == Bucket(768, 448, 89)
    assert default_bucket("Lightricks/LTX-2", downscale=2) == Bucket(768, 448, 89)
    assert default_bucket(None, downscale=4) == Bucket(768, 512, 89)
    for name, modality in (("tiny", "camera-image"), (None, "camera-image"), (None, "canny")):
        downscale = get_modality(modality).downscale
        default_bucket(name, downscale).check(32, 8, downscale)
