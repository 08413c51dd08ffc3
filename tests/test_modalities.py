"""The modality registry (Table 5 defaults, third-party plugins) and the weightless extractors."""

from __future__ import annotations

import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest

from avctl.errors import BadUsage
from avctl.media import Bucket, fit_to_bucket, read_video
from avctl.modalities.base import ALL_GROUPS, Clip, all_modalities, get_modality
from avctl.modalities.canny import CannyExtractor
from avctl.modalities.detail import DetailExtractor
from avctl.modalities.inpaint import (
    HOLE_COLOUR,
    InpaintMaskExtractor,
    border_mask,
    free_form_mask,
    rectangle_mask,
)
from avctl.prepare import prepare
from tests.conftest import synthetic_frames, write_synthetic_clip

SA, SA_FF, SA_CA_FF = ("V.SA",), ("V.SA", "V.FF"), ("V.SA", "V.CA", "V.FF")
AUDIO = ("A.SA", "A.FF", "V→A")
# The paper's Table 5 (+ §8 downscales): name → (category, steps, train samples, rank, targets, downscale).
TABLE_5 = {
    "depth": ("spatial", 3000, 2000, 128, SA, 2),
    "pose": ("spatial", 3000, 2000, 128, SA, 2),
    "canny": ("spatial", 3000, 2000, 32, SA, 2),
    "inpaint": ("editing", 1000, 1000, 128, SA, 1),
    "local-edit": ("editing", 1000, 1000, 128, SA_FF, 1),
    "detail": ("editing", 200, 200, 128, SA_CA_FF, 1),
    "camera-image": ("camera", 3000, 3000, 32, SA_CA_FF, 4),
    "camera-video": ("camera", 10000, 10000, 128, SA, 1),
    "cut-on-action": ("camera", 15000, 15000, 128, SA_FF, 1),
    "tracks": ("motion", 5000, 5000, 32, SA_CA_FF, 2),
    "audio-intensity": ("audio", 2000, 7800, 128, AUDIO, 1),
    "speech-ambient": ("audio", 5000, 2600, 128, AUDIO, 1),
    "who-is-talking": ("audio-visual", 3500, 500, 128, ALL_GROUPS, 1),
}


def _clip(frames: np.ndarray, key: str = "a/clip.mp4", seed: int = 42, downscale: int = 1) -> Clip:
    height, width = frames.shape[1:3]
    return Clip(frames=frames, fps=12.0, key=key, seed=seed, reference_size=(height // downscale, width // downscale))


# ------------------------------------------------------------------------------------------------------- registry
def test_registry_matches_table_5() -> None:
    registry = all_modalities()
    assert set(registry) == set(TABLE_5)
    for name, (category, steps, samples, rank, targets, downscale) in TABLE_5.items():
        mod = registry[name]
        assert (mod.category, mod.steps, mod.train_samples, mod.rank, mod.downscale) == (
            category, steps, samples, rank, downscale), name
        assert set(mod.targets) == set(targets), name
        assert mod.alpha == mod.rank and mod.layout == "parallel" and mod.extractor_note, name
    assert sum(m.steps for m in registry.values()) == 54_700  # the paper: "~55K steps" in total


def test_streams_context_and_data_sources() -> None:
    registry = all_modalities()
    for name, mod in registry.items():
        if mod.category == "audio":
            assert mod.streams == ("audio",) and mod.trained_streams == ("audio",), name
        else:
            assert mod.streams == ("video",), name
    assert registry["audio-intensity"].context == "clean"  # the video is clean context (paper §7)
    assert registry["speech-ambient"].context == "noised"
    assert registry["who-is-talking"].trained_streams == ("video", "audio")
    assert {n for n, m in registry.items() if m.paired} == {"local-edit", "cut-on-action", "camera-video"}
    assert {n for n, m in registry.items() if m.first_frame_image} == {"camera-image"}
    weightless = {"canny", "detail", "inpaint", "tracks", "audio-intensity"}
    # their weights are not shipped (or need a sidecar / optional package): building them without must say so
    model_backed = {"depth", "pose", "camera-image", "speech-ambient", "who-is-talking"}
    pair_builders = {"camera-video"}  # paired, and also builds its pairs from plain videos (depth files or model)
    assert {n for n, m in registry.items() if m.extractor is not None} == weightless | model_backed | pair_builders
    for name in weightless:
        extractor = registry[name].extractor()
        assert isinstance(extractor.backend, str) and isinstance(extractor.version, str)


def test_third_party_plugin_is_discovered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "fake_modality.py").write_text(textwrap.dedent("""
        from avctl.modalities.base import Modality

        FAKE = Modality(name="fake", category="spatial", description="a test plugin", streams=("video",),
                        targets=("V.SA",), rank=8, steps=10, train_samples=1)
    """))
    info = tmp_path / "fake_plugin-0.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-plugin\nVersion: 0.0\n")
    (info / "entry_points.txt").write_text("[avctl.modalities]\nfake = fake_modality:FAKE\n")
    assert "fake" not in all_modalities()
    monkeypatch.syspath_prepend(str(tmp_path))
    registry = all_modalities()
    assert registry["fake"].rank == 8 and set(TABLE_5) < set(registry)
    assert get_modality("fake").description == "a test plugin"


# ---------------------------------------------------------------------------------------------------------- canny
def _expected_canny(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    height, width = size
    return np.stack([
        cv2.resize(cv2.Canny(cv2.cvtColor(f, cv2.COLOR_RGB2GRAY), 100, 200), (width, height),
                   interpolation=cv2.INTER_AREA)
        for f in frames
    ])  # [F, h, w]


def test_canny_extractor_rule() -> None:
    frames = synthetic_frames(5, 64, 64)
    control = CannyExtractor()(_clip(frames, downscale=2))
    assert control.frames is not None and control.mask is None
    assert control.frames.shape == (5, 32, 32, 3) and control.frames.dtype == np.uint8
    assert np.array_equal(control.frames[..., 0], control.frames[..., 2])  # grey
    assert np.array_equal(control.frames[..., 0], _expected_canny(frames, (32, 32)))
    assert control.frames.max() > 0  # the moving shapes have edges


def test_canny_line_width_dilates_before_the_shrink() -> None:
    frames = synthetic_frames(5, 64, 64)
    thin = CannyExtractor()(_clip(frames, downscale=2)).frames
    thick_extractor = CannyExtractor(line_width=3)
    thick = thick_extractor(_clip(frames, downscale=2)).frames
    kernel = np.ones((3, 3), np.uint8)
    expected = np.stack([
        cv2.resize(cv2.dilate(cv2.Canny(cv2.cvtColor(f, cv2.COLOR_RGB2GRAY), 100, 200), kernel), (32, 32),
                   interpolation=cv2.INTER_AREA)
        for f in frames
    ])
    assert np.array_equal(thick[..., 0], expected)
    assert (thick[..., 0] >= 128).sum() > 2 * (thin[..., 0] >= 128).sum()  # the lines are visibly wider
    assert np.all(thick >= thin)  # dilation only adds edge
    assert CannyExtractor(line_width=1).version == CannyExtractor.version  # the default keeps old datasets valid
    assert "lines 3 px" in thick_extractor.version
    for bad in (0, 16, 2.5, True):
        with pytest.raises(BadUsage, match="--line-width"):
            CannyExtractor(line_width=bad)  # type: ignore[arg-type]


def test_canny_reference_survives_the_codec(tmp_path: Path) -> None:
    source = write_synthetic_clip(tmp_path / "in" / "clip.mp4", frames=12, width=96, height=80, audio_channels=None)
    bucket = Bucket(64, 64, 9)
    summary = prepare(get_modality("canny"), [source], tmp_path / "out", bucket, None)
    assert summary.done == ["clip"]
    bucket_frames = fit_to_bucket(read_video(source, max_frames=9).frames, 64, 64)
    expected = _expected_canny(bucket_frames, (32, 32))
    reference = read_video(tmp_path / "out" / "reference" / "clip.mp4").frames
    assert reference.shape == (9, 32, 32, 3)
    assert np.abs(reference[..., 0].astype(float) - expected).mean() <= 2


# -------------------------------------------------------------------------------------------------------- inpaint
def test_mask_shapes_cover_10_to_60_percent() -> None:
    rng = np.random.default_rng(0)
    for _ in range(25):
        height, width = (int(v) for v in rng.choice([48, 64, 96, 128, 448], size=2))
        for make, cover in ((rectangle_mask, rng.uniform(0.12, 0.58)), (border_mask, rng.uniform(0.12, 0.58)),
                            (free_form_mask, rng.uniform(0.1, 0.5))):
            mask = make(rng, height, width, cover)
            assert mask.shape == (height, width) and set(np.unique(mask)) <= {0, 255}
            assert 0.10 <= np.mean(mask > 0) <= 0.60, (make.__name__, height, width, cover)
    border = border_mask(np.random.default_rng(1), 64, 64, 0.3)
    edges = np.concatenate([border[0], border[-1], border[:, 0], border[:, -1]])
    assert edges.max() == 255  # outpainting masks reach the frame border


def test_inpaint_extractor_paints_holes_green_per_clip() -> None:
    frames = synthetic_frames(4, 64, 48)
    extractor = InpaintMaskExtractor()
    covers, masks = [], []
    for i in range(30):
        control = extractor(_clip(frames, key=f"clip{i}.mp4"))
        assert control.frames is not None and control.mask is not None
        assert control.frames.shape == frames.shape and control.mask.shape == (4, 48, 64)
        hole = control.mask[0] > 0
        assert all(np.array_equal(m, control.mask[0]) for m in control.mask)  # static over time
        assert np.all(control.frames[:, hole] == HOLE_COLOUR)
        assert np.array_equal(control.frames[:, ~hole], frames[:, ~hole])
        covers.append(hole.mean())
        masks.append(hole)
    assert min(covers) >= 0.10 and max(covers) <= 0.60
    assert len({m.tobytes() for m in masks}) == 30  # a different mask per clip
    again = extractor(_clip(frames, key="clip3.mp4"))
    assert again.mask is not None and np.array_equal(again.mask[0] > 0, masks[3])  # same key, same seed → same
    other_seed = extractor(_clip(frames, key="clip3.mp4", seed=7))
    assert other_seed.mask is not None and not np.array_equal(other_seed.mask[0] > 0, masks[3])


# --------------------------------------------------------------------------------------------------------- detail
def test_detail_degrades_but_keeps_size() -> None:
    frames = synthetic_frames(3, 96, 64)
    noise = np.random.default_rng(0).integers(0, 60, size=frames.shape, dtype=np.uint8)
    frames = frames // 2 + noise  # fine texture, which a 2–4× down/up round trip must lose
    extractor = DetailExtractor()
    control = extractor(_clip(frames))
    assert control.frames is not None and control.frames.shape == frames.shape and control.frames.dtype == np.uint8
    difference = np.abs(control.frames.astype(float) - frames)
    assert difference.mean() > 5
    assert abs(control.frames.astype(float).mean() - frames.mean()) < 3  # degraded, not a different picture
    factors = {extractor.factor(_clip(frames, key=f"k{i}")) for i in range(20)}
    assert all(2.0 <= f <= 4.0 for f in factors) and len(factors) == 20
    assert np.array_equal(extractor(_clip(frames)).frames, control.frames)  # deterministic
