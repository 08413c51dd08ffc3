"""The procedural world: determinism, and ground truth that agrees with the pixels and the audio."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from avctl.errors import BadUsage
from avctl.metrics import tolerant_f1
from avctl.world import BACKGROUND_DEPTH, SHAPE_COLOURS, WORLD_WORDS, make_clip, write_world_dataset

SEEDS = (1, 2, 3, 4)


@pytest.fixture(scope="module")
def clips():
    return [make_clip(s, size=64, frames=9) for s in SEEDS]


def test_same_seed_same_clip_other_seed_other_clip():
    a, b, c = make_clip(5, frames=9), make_clip(5, frames=9), make_clip(6, frames=9)
    assert np.array_equal(a.frames, b.frames) and np.array_equal(a.audio, b.audio) and a.caption == b.caption
    for key in a.truth:
        assert np.array_equal(a.truth[key], b.truth[key]), key
    assert not np.array_equal(a.frames, c.frames)


def test_shapes_and_types(clips):
    for clip in clips:
        n = len(clip.scene["shapes"])
        f, h, w = 9, 64, 64
        assert clip.frames.shape == (f, h, w, 3) and clip.frames.dtype == np.uint8
        assert clip.audio.dtype == np.float32 and clip.audio.shape == (2, round(f / clip.fps * clip.sample_rate))
        assert clip.truth["depth"].shape == (f, h, w) and clip.truth["masks"].shape == (n, f, h, w)
        assert clip.truth["tracks"].shape == (n, f, 2) and clip.truth["boxes"].shape == (n, f, 4)
        assert clip.truth["speaking"].shape == (n, f) and clip.truth["layer_offsets"].shape == (n + 1, f, 2)


def test_canny_of_the_frames_matches_the_edge_truth(clips):
    # The background texture is gentle and the shapes contrast, so Canny at the canny modality's thresholds finds
    # the shape outlines and little else.
    for clip in clips:
        canny = np.stack([cv2.Canny(cv2.cvtColor(f, cv2.COLOR_RGB2GRAY), 100, 200) for f in clip.frames])
        assert tolerant_f1(clip.truth["edges"] > 0, canny > 0, 2) > 0.85, clip.caption
    # and the metric is not trivially high: another clip's edges do not match
    other = clips[1].truth["edges"]
    assert tolerant_f1(clips[0].truth["edges"] > 0, other > 0, 2) < 0.5


def test_masks_labels_and_depth_agree_with_the_pixels(clips):
    for clip in clips:
        labels, depth = clip.truth["labels"], clip.truth["depth"]
        assert np.all(depth[labels == 0] == BACKGROUND_DEPTH)
        for i, shape in enumerate(clip.scene["shapes"]):
            mask = clip.truth["masks"][i]
            assert np.array_equal(mask, labels == i + 1)
            assert np.all(depth[mask] == shape["depth"]) and shape["depth"] < BACKGROUND_DEPTH
            # interior pixels (eroded mask) carry the shape's colour (up to its shading)
            colour = np.array(SHAPE_COLOURS[shape["colour"]], np.float32)
            for f in range(len(clip.frames)):
                core = cv2.erode(mask[f].astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
                if core.sum() > 4:
                    mean = clip.frames[f][core].astype(np.float32).mean(axis=0)
                    assert np.abs(mean - colour).max() < 40, (clip.caption, f)


def test_nearer_shapes_occlude_farther_ones():
    # Find a clip where two shapes overlap and check the nearer one is what is visible there.
    for seed in range(40):
        clip = make_clip(seed, frames=9, max_shapes=3)
        shapes = clip.scene["shapes"]
        if len(shapes) < 2:
            continue
        from avctl.world import _inside

        for f in range(9):
            t = f / clip.fps
            cover = []
            for i, s in enumerate(shapes):
                ss = 2
                grid = (np.arange(64 * ss) + 0.5) / ss
                xs, ys = np.meshgrid(grid, grid)
                r = s["radius"] * (1 + 0.12 * clip.truth["speaking"][i, f] * np.sin(2 * np.pi * 4 * t))
                inside = _inside(s["shape"], xs - clip.truth["tracks"][i, f, 0], ys - clip.truth["tracks"][i, f, 1],
                                 r, s["spin"] * t)
                cover.append(inside.reshape(64, ss, 64, ss).all(axis=(1, 3)))
            both = cover[0] & cover[1]
            if both.sum() > 4:
                nearer = 1 if shapes[1]["depth"] < shapes[0]["depth"] else 0
                visible = clip.truth["labels"][f][both]
                assert np.all((visible == nearer + 1) | (visible > 2)), seed
                return
    pytest.fail("no overlapping shapes in 40 clips")


def test_tracks_and_boxes_follow_the_shapes(clips):
    checked = 0
    for clip in clips:
        for i in range(len(clip.scene["shapes"])):
            for f in range(len(clip.frames)):
                mask = clip.truth["masks"][i, f]
                if not mask.any():
                    continue
                ys, xs = np.nonzero(mask)
                x0, y0, x1, y1 = clip.truth["boxes"][i, f]
                assert x0 - 1 <= xs.min() and xs.max() <= x1 + 1 and y0 - 1 <= ys.min() and ys.max() <= y1 + 1
                # A circle fully in view and unoccluded: its centroid is the track point.
                whole = clip.scene["shapes"][i]["shape"] == "circle" and x0 > 1 and y0 > 1 and x1 < 63 and y1 < 63
                if whole and mask.sum() > 0.9 * np.pi * ((x1 - x0) / 2) ** 2:
                    cx, cy = xs.mean() + 0.5, ys.mean() + 0.5
                    assert np.hypot(cx - clip.truth["tracks"][i, f, 0], cy - clip.truth["tracks"][i, f, 1]) < 1.0
                    checked += 1
    # and the tracks move: a track from another clip does not fit
    assert checked > 0 or all(s["shape"] != "circle" for c in clips for s in c.scene["shapes"])


def test_camera_parallax_moves_near_layers_more():
    clip = next(c for c in (make_clip(s, frames=9) for s in range(30)) if c.scene["pan"] != 0)
    offsets = clip.truth["layer_offsets"]  # [L, F, 2]
    shift = np.abs(offsets[:, -1, 0] - offsets[:, 0, 0])
    depths = clip.truth["layer_depths"]
    order = np.argsort(depths)
    assert np.all(np.diff(shift[order]) < 0)  # nearer (smaller depth) → larger shift
    assert ("right" if clip.scene["pan"] > 0 else "left") in clip.caption
    # the background texture really slides: frames differ where no shape is
    still = (clip.truth["labels"][0] == 0) & (clip.truth["labels"][-1] == 0)
    assert np.abs(clip.frames[0][still].astype(int) - clip.frames[-1][still].astype(int)).mean() > 2


def test_each_shape_has_its_own_tone_louder_when_speaking():
    clip = next(c for c in (make_clip(s, frames=17, max_shapes=1) for s in range(50))
                if c.truth["speaking"][0].any() and not c.truth["speaking"][0].all())
    tone = clip.scene["shapes"][0]["tone_hz"]
    mono = clip.audio.mean(axis=0)
    spectrum = np.abs(np.fft.rfft(mono))
    freqs = np.fft.rfftfreq(len(mono), 1 / clip.sample_rate)
    assert abs(freqs[spectrum.argmax()] - tone) < 5
    per_frame = np.array_split(mono, len(clip.frames))
    rms = np.array([np.sqrt(np.mean(x ** 2)) for x in per_frame])
    speaking = clip.truth["speaking"][0]
    assert rms[speaking].mean() > 2 * rms[~speaking].mean()


def test_captions_use_only_known_words():
    from avctl.presets import TINY_WORDS

    known = set(TINY_WORDS.split()) | set(WORLD_WORDS)
    for seed in range(30):
        caption = make_clip(seed, frames=1).caption
        words = caption.replace(",", " ").replace(".", " ").split()
        assert set(words) <= known, caption


def test_write_world_dataset_is_what_prepare_reads(tmp_path):
    from avctl import media
    from avctl.prepare import caption_for

    paths = write_world_dataset(tmp_path / "w", 2, seed=3, frames=9, truth=True)
    assert [p.name for p in paths] == ["world_0000.mp4", "world_0001.mp4"]
    clip = media.read_video(paths[0])
    assert clip.frames.shape == (9, 64, 64, 3)
    again = make_clip(3 * 100_003 + 0, frames=9)
    assert np.abs(clip.frames.astype(int) - again.frames.astype(int)).mean() < 6  # H.264, not lossless
    assert caption_for(paths[0], None) == again.caption
    with np.load(paths[0].with_suffix(".npz")) as z:
        assert np.array_equal(z["edges"], again.truth["edges"])
    audio = media.read_audio(paths[0], 48_000, 2)
    assert audio is not None and audio.shape[0] == 2


def test_world_written_in_two_ranges_equals_one_run(tmp_path):
    whole = write_world_dataset(tmp_path / "one", 3, seed=4, frames=9)
    parts = write_world_dataset(tmp_path / "two", 1, seed=4, frames=9, start=2)
    parts += write_world_dataset(tmp_path / "two", 2, seed=4, frames=9)
    assert sorted(p.name for p in parts) == [p.name for p in whole] == ["world_0000.mp4", "world_0001.mp4",
                                                                        "world_0002.mp4"]
    for p in whole:
        twin = tmp_path / "two" / p.name
        assert twin.read_bytes() == p.read_bytes()
        assert twin.with_suffix(".txt").read_text() == p.with_suffix(".txt").read_text()
    with pytest.raises(BadUsage):
        write_world_dataset(tmp_path / "bad", 1, start=-1)


def test_bad_sizes_are_refused():
    with pytest.raises(BadUsage):
        make_clip(0, size=60)
    with pytest.raises(BadUsage):
        make_clip(0, max_shapes=0)
