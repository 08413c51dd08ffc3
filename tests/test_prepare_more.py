"""`prepare`, continued: the OpenCV point tracker and its rendering, pairs manifests, --weights / --backend,
extraction throughput and --encode."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from avctl.cli import app
from avctl.errors import BadInput, BadUsage
from avctl.extractors import build_extractor, resolve_weights
from avctl.media import Bucket, fit_to_bucket, read_video
from avctl.modalities.base import Clip, Control, get_modality
from avctl.modalities.tracks import FB_MAX_ERROR, LKTracksExtractor, Tracks, lk_step, render_tracks, track_points
from avctl.prepare import find_pairs, prepare, prepare_throughput
from tests.conftest import write_synthetic_clip

SHIFT = (3, 2)  # px per frame (x, y)
H, W, F, OCCLUDE_AT, OCCLUDER_X = 96, 128, 12, 6, 64


def _texture(height: int, width: int, seed: int) -> np.ndarray:
    """Blurred noise, full contrast: corners everywhere, no repeating pattern. [height, width] uint8."""
    noise = np.random.default_rng(seed).integers(0, 256, (height, width)).astype(np.float32)
    return cv2.normalize(cv2.GaussianBlur(noise, (0, 0), 2.0), None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)


def _translating(frames: int = F) -> np.ndarray:
    """[F, H, W, 3]: a texture whose content moves by SHIFT every frame (crops of a larger texture)."""
    big = _texture(H + 2 * SHIFT[1] * frames, W + 2 * SHIFT[0] * frames, seed=0)
    x0, y0 = SHIFT[0] * frames, SHIFT[1] * frames
    crops = [big[y0 - SHIFT[1] * t : y0 - SHIFT[1] * t + H, x0 - SHIFT[0] * t : x0 - SHIFT[0] * t + W] for t in
             range(frames)]
    return np.repeat(np.stack(crops)[..., None], 3, axis=-1)


def _truth_errors(tracks: Tracks, clear_of: tuple[int, int] | None = None) -> tuple[float, float]:
    """(largest, largest where the point's LK window is clear of the occluder) distance of a visible point from where
    the true motion puts it, from its first frame. `clear_of` = (occluder's first frame, its left edge)."""
    worst = worst_clear = 0.0
    for points, visible in zip(tracks.points, tracks.visible, strict=True):
        frames = np.flatnonzero(visible)
        expected = points[frames[0]] + np.outer(frames - frames[0], SHIFT)
        errors = np.abs(points[frames] - expected).max(axis=1)
        clear = np.ones(len(frames), bool) if clear_of is None else (
            (frames < clear_of[0]) | (expected[:, 0] + 11 < clear_of[1]))
        worst = max(worst, float(errors.max()))
        worst_clear = max(worst_clear, float(errors[clear].max(initial=0.0)))
    return worst, worst_clear


# ---------------------------------------------------------------------------------------------------------- tracks
def test_tracks_follow_a_translation() -> None:
    tracks = track_points(_translating())
    from_start = tracks.visible[:, 0]
    assert from_start.sum() >= 30
    assert tracks.visible[from_start, -1].sum() >= 10  # many live through the whole clip
    assert _truth_errors(tracks)[0] <= 0.5
    # Every track is one contiguous run of visible frames.
    for visible in tracks.visible:
        frames = np.flatnonzero(visible)
        assert len(frames) == frames[-1] - frames[0] + 1


def test_points_on_an_occluded_region_are_dropped() -> None:
    frames = _translating()
    occluder = _texture(H, W, seed=1)
    frames[OCCLUDE_AT:, :, OCCLUDER_X:] = occluder[:, OCCLUDER_X:, None]  # a static, textured occluder appears
    tracks = track_points(frames)
    before = tracks.points[:, OCCLUDE_AT - 1]
    deep = tracks.visible[:, OCCLUDE_AT - 1] & (before[:, 0] + SHIFT[0] >= OCCLUDER_X + 10)  # whole LK window hidden
    assert deep.sum() >= 5
    assert not tracks.visible[deep, OCCLUDE_AT].any()
    earlier = tracks.visible[:, :OCCLUDE_AT].any(axis=1)  # (later seeds may sit on the static occluder)
    worst, clear = _truth_errors(Tracks(tracks.points[earlier], tracks.visible[earlier]), (OCCLUDE_AT, OCCLUDER_X))
    assert clear <= 0.5 and worst <= 2.0  # half-covered windows may slip a little before they go; none latch on
    # The forward-backward check on its own drops most of them: their round trips miss by more than 1 px.
    greys = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames[OCCLUDE_AT - 1 : OCCLUDE_AT + 1]]
    _, kept, error = lk_step(greys[0], greys[1], before[deep])
    assert (error > FB_MAX_ERROR).mean() > 0.6 and not kept[error > FB_MAX_ERROR].any()
    assert np.isinf(lk_step(greys[0], greys[1], before[deep], max_error=np.inf)[2]).sum() < deep.sum()


def test_points_on_a_vanishing_region_are_dropped() -> None:
    frames = _translating()
    frames[OCCLUDE_AT:, :, OCCLUDER_X:] = 128  # the texture there turns flat
    tracks = track_points(frames)
    before = tracks.points[:, OCCLUDE_AT - 1]
    deep = tracks.visible[:, OCCLUDE_AT - 1] & (before[:, 0] + SHIFT[0] >= OCCLUDER_X + 10)
    assert deep.sum() >= 5 and not tracks.visible[deep, OCCLUDE_AT].any()
    greys = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames[OCCLUDE_AT - 1 : OCCLUDE_AT + 1]]
    assert not lk_step(greys[0], greys[1], before[deep])[1].any()


def test_rendering_draws_dots_where_tracks_are() -> None:
    points = np.array([[[20.0 + 8 * t, 30.0] for t in range(4)], [[100.0, 60.0 + 4 * t] for t in range(4)]],
                      dtype=np.float32)  # [2 tracks, 4 frames, 2]
    visible = np.array([[True] * 4, [False, False, True, True]])
    frames = render_tracks(Tracks(points, visible), (96, 128), (48, 64))
    assert frames.shape == (4, 48, 64, 3) and frames.dtype == np.uint8
    last = frames[3].astype(int)
    x, y = 44 // 2, 30 // 2  # track 0's newest point, at half size
    assert last[y, x].sum() > 150
    assert last[y, x, 2] > 2 * max(last[y, x, 0], last[y, x, 1])  # newest is red, written BGR: blue channel
    assert last[30 // 2, 20 // 2].sum() > 0  # its trail: where it was three frames ago
    assert last[68 // 2, 100 // 2].sum() > 100  # track 1, seeded at frame 2
    assert frames[1, 60 // 2, 100 // 2].sum() == 0  # ... invisible before it starts
    lit = last.sum(-1) > 0
    lit[5:26, 3:30] = False  # the first track's dots and trail
    lit[25:40, 44:57] = False  # the second's
    assert not lit.any()  # black everywhere else


def test_tracks_backend_choices() -> None:
    tracks = get_modality("tracks")
    assert isinstance(build_extractor(tracks, backend="opencv-lk"), LKTracksExtractor)
    with pytest.raises(BadUsage, match=r"AllTracker is not shipped.*install it"):
        build_extractor(tracks, backend="alltracker")
    with pytest.raises(BadUsage, match="unknown tracks backend; use one of opencv-lk, alltracker"):
        build_extractor(tracks, backend="raft")
    with pytest.raises(BadUsage, match="no such file or folder"):
        build_extractor(tracks, weights=Path("/nonexistent/weights"))
    with pytest.raises(BadUsage, match="--weights and --backend: the 'canny' extractor takes no weights"):
        build_extractor(get_modality("canny"), weights=Path("."), backend="x")


def test_prepare_tracks_end_to_end(tmp_path: Path) -> None:
    clip = write_synthetic_clip(tmp_path / "in" / "a.mp4", frames=9, width=96, height=64)
    summary = prepare(get_modality("tracks"), [clip], tmp_path / "ds", Bucket(128, 64, 9), None)
    assert summary.done == ["a"] and summary.frames_per_s is not None and summary.frames_per_s > 0
    info = json.loads((tmp_path / "ds" / "avctl.json").read_text())
    assert info["extractor"]["backend"] == "opencv-lk" and info["reference_size"] == [32, 64]
    reference = read_video(tmp_path / "ds" / "reference" / "a.mp4").frames
    assert reference.shape == (9, 32, 64, 3) and reference[-1].max() > 100  # dots on black
    assert (reference[-1].sum(-1) < 10).mean() > 0.8


# --------------------------------------------------------------------------------------- weights / backend plumbing
def test_factories_taking_options_get_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict[str, Any]] = []

    class Recording:
        backend = "rec"
        version = "1"

        def __init__(self, weights: Path | None = None, backend: str | None = None) -> None:
            calls.append({"weights": weights, "backend": backend})

        def __call__(self, clip: Clip) -> Control:
            height, width = clip.reference_size
            return Control(frames=np.zeros((len(clip.frames), height, width, 3), np.uint8))

    modality = replace(get_modality("canny"), extractor=Recording)
    home = tmp_path / "home"
    (home / "weights" / "rec").mkdir(parents=True)
    (home / "weights" / "other").mkdir(parents=True)
    monkeypatch.delenv("AVCTL_HOME", raising=False)
    build_extractor(modality)
    monkeypatch.setenv("AVCTL_HOME", str(home))
    build_extractor(modality)
    build_extractor(modality, backend="other")
    build_extractor(modality, weights=tmp_path, backend="other")
    assert calls == [{"weights": None, "backend": None}, {"weights": home / "weights" / "rec", "backend": None},
                     {"weights": home / "weights" / "other", "backend": "other"},
                     {"weights": tmp_path, "backend": "other"}]
    assert resolve_weights(None, "missing") is None

    clip = write_synthetic_clip(tmp_path / "in" / "a.mp4", frames=9, width=64, height=64)
    calls.clear()
    prepare(modality, [clip], tmp_path / "ds", Bucket(64, 64, 9), None, backend="other")
    assert calls and all(call["backend"] == "other" for call in calls)


# ------------------------------------------------------------------------------------------------------------ pairs
@pytest.fixture(scope="module")
def pairs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pairs")
    write_synthetic_clip(root / "src" / "one.mp4", frames=10, width=96, height=64, seed=1)
    write_synthetic_clip(root / "edit" / "one.mp4", frames=10, width=96, height=64, seed=2)
    write_synthetic_clip(root / "src" / "two.mp4", frames=9, width=64, height=64, seed=3, audio_channels=None)
    write_synthetic_clip(root / "edit" / "two.mp4", frames=9, width=64, height=64, seed=4)
    (root / "edit" / "two.txt").write_text("sidecar caption\n")
    write_synthetic_clip(root / "edit" / "short.mp4", frames=4, width=64, height=64, seed=5)
    write_synthetic_clip(root / "edit" / "fast.mp4", frames=9, width=64, height=64, fps=24.0, seed=6)
    lines = [
        json.dumps({"source": "src/one.mp4", "target": "edit/one.mp4", "caption": " the box is gone "}),
        json.dumps({"source": "src/two.mp4", "target": "edit/two.mp4"}),
        "{not json",
        json.dumps({"source": "src/missing.mp4", "target": "edit/one.mp4"}),
        json.dumps({"source": "src/two.mp4", "target": "edit/one.mp4"}),
        json.dumps({"target": "edit/two.mp4"}),
        json.dumps({"source": "src/one.mp4", "target": "edit/short.mp4"}),
        json.dumps({"source": "src/two.mp4", "target": "edit/fast.mp4"}),
        "",
    ]
    (root / "pairs.jsonl").write_text("\n".join(lines))
    return root


def test_pairs_manifest_makes_target_and_reference(pairs_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "ds"
    summary = prepare(get_modality("local-edit"), [pairs_dir / "pairs.jsonl"], out, Bucket(64, 64, 9), "fallback")
    assert summary.done == ["edit/one", "edit/two"] and summary.failed == [] and summary.frames_per_s is None
    reasons = {item["clip"]: item["reason"] for item in summary.skipped}
    assert set(reasons) == {"pairs.jsonl:3", "pairs.jsonl:4", "pairs.jsonl:5", "pairs.jsonl:6", "edit/short",
                            "edit/fast"}
    assert "not valid JSON" in reasons["pairs.jsonl:3"]
    assert "src/missing.mp4 does not exist" in reasons["pairs.jsonl:4"]
    assert "already paired" in reasons["pairs.jsonl:5"] and "no source path" in reasons["pairs.jsonl:6"]
    assert "4 frames, the bucket needs 9" in reasons["edit/short"]
    assert "12 fps but its target" in reasons["edit/fast"] and "has 24 fps" in reasons["edit/fast"]

    rows = [json.loads(line) for line in (out / "dataset.jsonl").read_text().splitlines()]
    assert rows[0] == {"video": "video/edit/one.mp4", "caption": "the box is gone",
                       "reference_video": "reference/edit/one.mp4", "fps": 12.0}
    assert rows[1]["caption"] == "sidecar caption"
    info = json.loads((out / "avctl.json").read_text())
    assert info["extractor"]["backend"] == "pairs-manifest" and info["modality"] == "local-edit"
    # Target and reference: the same first 9 frames of each video, fitted to the bucket the same way.
    target = read_video(out / "video" / "edit" / "one.mp4").frames
    reference = read_video(out / "reference" / "edit" / "one.mp4").frames
    source = fit_to_bucket(read_video(pairs_dir / "src" / "one.mp4", max_frames=9).frames, 64, 64)
    edited = fit_to_bucket(read_video(pairs_dir / "edit" / "one.mp4", max_frames=9).frames, 64, 64)
    assert reference.shape == target.shape == (9, 64, 64, 3)
    assert np.abs(reference.astype(int) - source).mean() < 2.0  # lossless (up to the RGB↔YUV round trip)
    assert np.abs(reference.astype(int) - edited).mean() > 10.0  # the source, not the target
    assert np.abs(target.astype(int) - edited).mean() < 6.0

    again = prepare(get_modality("local-edit"), [pairs_dir / "pairs.jsonl"], out, Bucket(64, 64, 9), "fallback")
    assert again.done == [] and again.existing == ["edit/one", "edit/two"] and again.rows == 2


def test_pairs_csv_and_refusals(pairs_dir: Path, tmp_path: Path) -> None:
    csv_path = pairs_dir / "pairs.csv"
    csv_path.write_text('source,target,caption\nsrc/one.mp4,edit/one.mp4,"a, b"\nsrc/nope.mp4,edit/two.mp4,\n')
    pairs, skipped = find_pairs([csv_path])
    assert [(p.rel, p.reference, p.caption) for p in pairs] == [("edit/one", pairs_dir / "src" / "one.mp4", "a, b")]
    assert skipped[0]["clip"] == "pairs.csv:3" and "does not exist" in skipped[0]["reason"]
    summary = prepare(get_modality("cut-on-action"), [csv_path], tmp_path / "c", Bucket(64, 64, 9), None)
    assert summary.done == ["edit/one"] and summary.rows == 1

    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    with pytest.raises(BadInput, match=r"bad\.csv: a pairs CSV needs a header row with 'source' and 'target'"):
        prepare(get_modality("camera-video"), [tmp_path / "bad.csv"], tmp_path / "d", Bucket(64, 64, 9), None)
    with pytest.raises(BadInput, match="prepare for 'local-edit' needs a pairs manifest"):
        prepare(get_modality("local-edit"), [pairs_dir / "edit" / "one.mp4"], tmp_path / "e", Bucket(64, 64, 9), None)
    with pytest.raises(BadUsage, match=r"pairs\.jsonl: a pairs manifest, but 'canny' extracts its control from videos"):
        prepare(get_modality("canny"), [pairs_dir / "pairs.jsonl"], tmp_path / "f", Bucket(64, 64, 9), None)
    with pytest.raises(BadUsage, match="runs no extractor"):
        prepare(get_modality("local-edit"), [csv_path], tmp_path / "g", Bucket(64, 64, 9), None, backend="x")


# ------------------------------------------------------------------------------------------ throughput and encode
def test_throughput() -> None:
    assert prepare_throughput(get_modality("canny"), frames=5, size=64) > 0
    assert prepare_throughput(get_modality("tracks"), frames=5, size=64) > 0
    with pytest.raises(BadUsage, match="runs no extractor"):
        prepare_throughput(get_modality("local-edit"))


def _cli(*args: object) -> Any:
    return CliRunner().invoke(app, [str(a) for a in args], env={"AVCTL_NO_PROGRESS": "1"})


def test_cli_json_reports_frames_per_s_and_encode_uses_the_cache(tmp_path: Path) -> None:
    videos = tmp_path / "videos"
    write_synthetic_clip(videos / "a.mp4", frames=9, width=64, height=64, seed=1)
    write_synthetic_clip(videos / "b.mp4", frames=9, width=64, height=64, seed=2)
    out = tmp_path / "ds"
    common = ("prepare", "canny", videos, "--out", out, "--bucket", "64x64x9", "--model", "tiny", "--json")
    first = _cli(*common, "--encode")
    assert first.exit_code == 0, first.output
    data = json.loads(first.stdout)
    assert data["frames_per_s"] > 0 and data["encoded"] == 2 and data["cached"] == 0
    assert len(list((out / ".precomputed" / "avctl").rglob("*.safetensors"))) == 2

    second = json.loads(_cli(*common, "--encode").stdout)
    assert second["encoded"] == 0 and second["cached"] == 2 and second["existing"] == ["a", "b"]
    (videos / "b.txt").write_text("a new caption")  # refreshed into the manifest; only b's key changes
    third = json.loads(_cli(*common, "--encode").stdout)
    assert third["encoded"] == 1 and third["cached"] == 1

    plain = json.loads(_cli(*common).stdout)
    assert "encoded" not in plain and plain["frames_per_s"] is None  # nothing extracted: everything existed
    refused = _cli("prepare", "tracks", videos, "--out", tmp_path / "t", "--bucket", "64x64x9", "--backend",
                   "alltracker")
    assert refused.exit_code == 2 and "alltracker" in refused.output


def test_bucket_check_follows_the_models_vae_factors(tmp_path):
    from avctl.dataset import default_bucket, vae_factors

    assert vae_factors(None) == vae_factors("tiny") == (32, 8)
    model = tmp_path / "model"
    (model / "vae").mkdir(parents=True)
    (model / "vae" / "config.json").write_text(json.dumps({"spatial_compression_ratio": 4,
                                                           "temporal_compression_ratio": 4}))
    assert vae_factors(str(model)) == (4, 4)
    assert str(default_bucket(str(model), 2)) == "768x448x89"  # LTX-2's size, already a multiple of 8
    (model / "vae" / "config.json").write_text("{not json")
    with pytest.raises(BadInput, match=r"config\.json"):
        vae_factors(str(model))
    write_synthetic_clip(tmp_path / "videos" / "c0.mp4", frames=20, width=48, height=40, fps=24.0, seed=0)
    canny = get_modality("canny")
    with pytest.raises(BadUsage, match="multiple of 64"):  # LTX-2's 32 px × the 2× reference
        prepare(canny, [tmp_path / "videos"], tmp_path / "ltx", Bucket(32, 32, 17), None)
    summary = prepare(canny, [tmp_path / "videos"], tmp_path / "small", Bucket(32, 32, 17), None, factors=(4, 4))
    assert summary.rows == 1
    row = json.loads((tmp_path / "small" / "dataset.jsonl").read_text().splitlines()[0])
    assert read_video(tmp_path / "small" / row["reference_video"]).frames.shape[1:3] == (16, 16)


def test_load_samples_decodes_ahead_keys_on_weights_and_stops_at_a_bad_row(tmp_path: Path) -> None:
    """load_samples decodes the next rows in threads while the model encodes: the tensors must be exactly those of
    encode_sample row by row, in manifest order; other encoder weights under the same config are not served from the
    cache; a damaged file stops the run with its name, and the rows before it stay cached."""
    import torch
    from safetensors.torch import load_file, save_file

    from avctl.backbone import load_backbone
    from avctl.cache import encode_sample, load_samples
    from avctl.dataset import load_manifest

    videos = tmp_path / "videos"
    for k in range(5):
        write_synthetic_clip(videos / f"c{k}.mp4", frames=9, width=64, height=64, seed=10 + k)
    out = tmp_path / "ds"
    assert _cli("prepare", "canny", videos, "--out", out, "--bucket", "64x64x9").exit_code == 0
    info, rows = load_manifest(out)
    bb = load_backbone("tiny", device="cpu")
    samples, encoded = load_samples(bb, out, info, rows)
    assert encoded == 5 and len(samples) == 5
    for sample, row in zip(samples, rows, strict=True):
        one = encode_sample(bb, out, row)
        assert torch.equal(sample.video, one["video"]) and torch.equal(sample.reference, one["reference"])
        assert torch.equal(sample.text_video, one["text_video"]) and torch.equal(sample.audio, one["audio"])

    assert load_samples(bb, out, info, rows)[1] == 0  # all fresh
    # Another checkpoint of the same architecture: the same config hash, other weights on disk, other latents. The
    # key reads the encoder files (not the loaded weights), so a saved copy is one model and an edited one another.
    model = tmp_path / "model"
    bb.save_pretrained(model)
    disk = load_backbone(str(model), device="cpu")
    assert load_samples(disk, out, info, rows)[1] == 5  # a folder is keyed by its files, tiny by its seed
    assert load_samples(disk, out, info, rows)[1] == 0
    weights = next((model / "vae").glob("*.safetensors"))
    tensors = load_file(str(weights))
    first = next(k for k in sorted(tensors) if k.startswith("encoder."))  # a weight encode_video uses
    tensors[first] = tensors[first] + 0.01
    save_file(tensors, str(weights))
    again, encoded = load_samples(load_backbone(str(model), device="cpu"), out, info, rows)
    assert encoded == 5 and not torch.equal(again[0].video, samples[0].video)

    for f in (out / ".precomputed").rglob("*.safetensors"):
        f.unlink()
    (out / rows[3]["reference_video"]).write_bytes(b"not a video")
    done: list[int] = []
    with pytest.raises(BadInput, match=rows[3]["reference_video"].split("/")[-1]):
        load_samples(bb, out, info, rows, progress=lambda d, t: done.append(d))
    assert done == [1, 2, 3]
    assert len(list((out / ".precomputed").rglob("*.safetensors"))) == 3  # rows 0-2 kept, nothing after the bad one
