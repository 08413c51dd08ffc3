"""`avctl generate` beyond one LoRA: audio + video LoRAs in one pass, composited controls, controls extracted from a
source video, first-frame images, the distilled schedule, --batch, --preview, and the CLI's bad-input messages."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from avctl.cli import app
from avctl.errors import BadInput, BadUsage
from avctl.lora import add_lora, lora_state_dict, read_lora, save_lora
from avctl.media import fit_to_bucket, probe, read_audio, read_video, write_video
from avctl.modalities.canny import CannyExtractor
from avctl.sample import (
    LoraUse,
    check_composite,
    composite_controls,
    control_from_video,
    generate,
    resize_control,
    resolve_schedule,
    side_by_side,
    sigma_schedule,
)
from tests.conftest import synthetic_frames, tone, write_synthetic_clip
from tests.tiny import backbone, fresh_transformer

SIZE = {"width": 64, "height": 64, "frames": 9, "fps": 24.0, "steps": 2}
runner = CliRunner()


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args], env={"AVCTL_NO_PROGRESS": "1"})


def make_lora(path: Path, groups: tuple[str, ...], downscale: int, seed: int, **meta: object) -> Path:
    """A LoRA file with random (non-zero) weights on `groups`, so it visibly changes the output."""
    tr = fresh_transformer()
    add_lora(tr, groups, rank=4)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in tr.named_parameters():
            if "lora_" in n:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    save_lora(path, lora_state_dict(tr), downscale=downscale, avctl_meta=meta)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("gen")
    return {
        "root": root,
        "video": make_lora(root / "canny.safetensors", ("V.SA",), 2, 1, modality="canny", streams=["video"]),
        "video1": make_lora(root / "detail.safetensors", ("V.SA",), 1, 2, modality="detail", streams=["video"]),
        "audio": make_lora(root / "speech.safetensors", ("A.SA",), 1, 3, modality="speech-ambient",
                           streams=["audio"]),
        "depth": make_lora(root / "depth.safetensors", ("V.SA",), 2, 4, modality="depth", streams=["video"]),
        # a modality whose extractor this version does not ship
        "noext": make_lora(root / "edit.safetensors", ("V.SA",), 1, 5, modality="local-edit", streams=["video"]),
    }


@pytest.fixture(scope="module")
def control():
    rng = np.random.default_rng(0)
    return (rng.random((9, 64, 64, 3)) * 255).astype(np.uint8)


def run(uses: list[LoraUse], **kw: object):
    return generate(backbone(), "a red ball", uses, **{**SIZE, **kw})


def differs(a: torch.Tensor, b: torch.Tensor) -> bool:
    return not torch.allclose(a, b, atol=1e-4)


# ------------------------------------------------------------------------------------------------ audio LoRAs
def test_video_and_audio_loras_in_one_joint_pass(files, control):
    rate = backbone().audio_sample_rate
    wav = tone(1.0, 2, rate)  # longer than the 0.375 s generation: cut, with a note
    video = LoraUse(read_lora(files["video"]), 1.0, control)
    audio = LoraUse(read_lora(files["audio"]), 1.0, None, wav)
    both = run([video, audio])
    only_video = run([video])
    only_audio = run([audio])
    assert differs(both.final_latents["audio"], only_video.final_latents["audio"])  # the audio LoRA acts
    assert differs(both.final_latents["video"], only_audio.final_latents["video"])  # the video LoRA acts
    assert any("audio control lasts 1.00 s" in w for w in both.warnings)
    other = run([video, LoraUse(read_lora(files["audio"]), 1.0, None, tone(1.0, 2, rate)[::-1].copy() * 0.2)])
    assert differs(both.final_latents["audio"], other.final_latents["audio"])  # its control is read
    with pytest.raises(BadInput, match=r"audio control lasts 0\.10 s"):
        run([LoraUse(read_lora(files["audio"]), 1.0, None, tone(0.1, 2, rate))])
    with pytest.raises(BadUsage, match="needs an audio --control"):
        run([LoraUse(read_lora(files["audio"]), 1.0, control)])


# ------------------------------------------------------------------------------------------------ composite
def test_composite_rule_on_arrays():
    base = np.zeros((2, 4, 4, 3), np.uint8)
    base[:, :, :2] = 100  # left half drawn
    later = np.zeros_like(base)
    later[:, 1, :] = (0, 200, 0)  # a green row across both halves
    later[:, 3, :] = (16, 16, 16)  # dark grey at the threshold: counts as black
    out = composite_controls([base, later])
    assert np.all(out[:, 1] == (0, 200, 0))  # the later control's drawn pixels win, over drawn and black alike
    assert np.all(out[:, 0, :2] == 100) and np.all(out[:, 0, 2:] == 0)  # elsewhere the earlier one stays
    assert np.all(out[:, 3, :2] == 100) and np.all(out[:, 3, 2:] == 0)  # ≤ 16 does not overwrite
    assert np.array_equal(composite_controls([later, base])[:, :, :2], base[:, :, :2])  # order matters
    with pytest.raises(BadUsage, match="control 2"):
        composite_controls([base, base[:, :2]])


def test_composite_needs_equal_downscales_and_makes_one_reference(files, control):
    two = LoraUse(read_lora(files["video"]), 1.0, control)  # downscale 2
    one = LoraUse(read_lora(files["video1"]), 1.0, control)  # downscale 1
    with pytest.raises(BadUsage, match=r"canny\.safetensors has 2, detail\.safetensors has 1"):
        check_composite([two, one])
    with pytest.raises(BadUsage, match="equal reference downscale"):
        run([two, one], composite=True)
    other = control[:, ::-1].copy()
    depth = read_lora(files["depth"])
    merged = run([two, LoraUse(depth, 1.0, other)], composite=True)
    # Compositing (A, B) equals feeding composite(A, B) and an all-black control: one reference, built from it.
    pre = composite_controls([resize_control(control, (32, 32), 9), resize_control(other, (32, 32), 9)])
    same = run([LoraUse(read_lora(files["video"]), 1.0, pre), LoraUse(depth, 1.0, np.zeros_like(pre))],
               composite=True)
    assert torch.allclose(merged.final_latents["video"], same.final_latents["video"], atol=1e-5)
    assert np.array_equal(merged.control, pre)
    separate = run([two, LoraUse(depth, 1.0, other)])
    assert differs(merged.final_latents["video"], separate.final_latents["video"])


# ------------------------------------------------------------------------------------------------ --from-video
def test_control_from_video_runs_the_modality_extractor(files, tmp_path):
    source = synthetic_frames(12, 96, 80, seed=3)
    lora = read_lora(files["video"])
    video, audio = control_from_video(lora, source, 24.0, width=64, height=64, frames=9, seed=0, key="src.mp4")
    assert audio is None and video.shape == (9, 32, 32, 3)  # reference size: output ÷ the LoRA's downscale
    expected = CannyExtractor()(_clip(fit_to_bucket(source[:9], 64, 64), (32, 32))).frames
    assert np.array_equal(video, expected)
    with pytest.raises(BadUsage, match=r"'local-edit'.*no extractor"):
        control_from_video(read_lora(files["noext"]), source, 24.0, width=64, height=64, frames=9, seed=0, key="s")
    with pytest.raises(BadInput, match="12 frames"):
        control_from_video(lora, source, 24.0, width=64, height=64, frames=17, seed=0, key="s")


def test_control_from_video_draws_the_control_as_the_lora_was_trained(tmp_path):
    source = synthetic_frames(12, 96, 80, seed=3)
    path = make_lora(tmp_path / "thick.safetensors", ("V.SA",), 2, 6, modality="canny", streams=["video"],
                     extractor_options={"line_width": 3})
    video, _ = control_from_video(read_lora(path), source, 24.0, width=64, height=64, frames=9, seed=0, key="s")
    clip = _clip(fit_to_bucket(source[:9], 64, 64), (32, 32))
    assert np.array_equal(video, CannyExtractor(line_width=3)(clip).frames)
    assert not np.array_equal(video, CannyExtractor()(clip).frames)
    bad = make_lora(tmp_path / "bad.safetensors", ("V.SA",), 2, 7, modality="canny", streams=["video"],
                    extractor_options={"sigma": 2})
    with pytest.raises(BadInput, match="recorded options"):
        control_from_video(read_lora(bad), source, 24.0, width=64, height=64, frames=9, seed=0, key="s")
    too_wide = make_lora(tmp_path / "wide.safetensors", ("V.SA",), 2, 8, modality="canny", streams=["video"],
                         extractor_options={"line_width": 99})
    with pytest.raises(BadInput, match=r"wide\.safetensors.*recorded options"):
        control_from_video(read_lora(too_wide), source, 24.0, width=64, height=64, frames=9, seed=0, key="s")


def _clip(frames: np.ndarray, size: tuple[int, int]):
    from avctl.modalities.base import Clip

    return Clip(frames=frames, fps=24.0, key="k", seed=0, reference_size=size)


def test_cli_from_video_and_preview(files, tmp_path):
    src = write_synthetic_clip(tmp_path / "src.mp4", frames=12, width=96, height=80, fps=24.0)
    out = tmp_path / "fv.mp4"
    r = invoke("generate", "--prompt", "edges", "--lora", files["video"], "--from-video", src, "--model", "tiny",
               "--width", 64, "--height", 64, "--frames", 9, "--steps", 1, "--preview", "--out", out, "--json")
    assert r.exit_code == 0, r.output
    side = json.loads(r.stdout)
    written = Path(side["control"][0])
    assert written == tmp_path / "fv.control-1.mp4" and side["from_video"] == str(src)
    assert read_video(written).frames.shape == (9, 32, 32, 3)
    preview, sheet = tmp_path / "fv.preview.mp4", tmp_path / "fv.sheet.png"
    assert side["preview"] == str(preview) and side["sheet"] == str(sheet)
    info = probe(preview)
    assert (info.width, info.height) == (64 + 64, 64) and info.has_audio  # control scaled to 64 high | output
    img = cv2.imread(str(sheet))
    assert img is not None and img.shape[0] > 2 * 64  # two rows of tiles
    r = invoke("generate", "--prompt", "x", "--lora", files["noext"], "--from-video", src, "--model", "tiny",
               "--width", 64, "--height", 64, "--frames", 9, "--out", tmp_path / "d.mp4")
    assert r.exit_code == 2 and "no extractor" in r.output and "Traceback" not in r.output


def test_side_by_side_scales_the_control_to_the_output_height():
    ctrl = np.full((3, 10, 20, 3), 255, np.uint8)
    out = np.zeros((3, 40, 30, 3), np.uint8)
    both = side_by_side(ctrl, out)
    assert both.shape == (3, 40, 80 + 30, 3)
    assert both[:, :, :80].min() == 255 and both[:, :, 80:].max() == 0


# ------------------------------------------------------------------------------------------------ --image
def test_first_frame_image_is_kept_clean(files, control):
    image = synthetic_frames(1, 64, 64, seed=5)[0]
    uses = [LoraUse(read_lora(files["video"]), 1.0, control)]
    cond = run(uses, first_frame=image, steps=3)
    free = run(uses, steps=3)
    encoded = backbone().encode_video(torch.from_numpy(image)[None, None])
    assert torch.allclose(cond.final_latents["video"][:, :, :1], encoded.float(), atol=1e-6)  # never moved
    assert differs(cond.final_latents["video"][:, :, 1:], free.final_latents["video"][:, :, 1:])  # and it steers

    def dist(frames: np.ndarray) -> float:
        return float(np.abs(frames[0].astype(np.float32) - image.astype(np.float32)).mean())

    assert dist(cond.frames) < dist(free.frames)


# ------------------------------------------------------------------------------------------------ schedules
def test_schedules():
    from diffusers.pipelines.ltx2.utils import DISTILLED_SIGMA_VALUES

    # "auto" is the preset's schedule (the preset comes from the model's files: tests/test_sampler.py).
    assert resolve_schedule("auto", "official") == "official"
    assert resolve_schedule("auto") == "shifted"
    assert resolve_schedule("distilled", "official") == "distilled"
    with pytest.raises(BadUsage, match="auto, official, shifted, distilled"):
        resolve_schedule("fast")
    sig = sigma_schedule("distilled", None, 4096)
    assert sig.tolist() == pytest.approx([*DISTILLED_SIGMA_VALUES, 0.0])
    with pytest.raises(BadUsage, match="exactly 8 steps"):
        sigma_schedule("distilled", 30, 4096)
    shifted = sigma_schedule("shifted", None, 4096)
    assert len(shifted) == 31 and float(shifted[0]) == pytest.approx(1.0) and float(shifted[-1]) == 0.0
    official = sigma_schedule("official", 30, 4096)  # LTX-2's scheduler: the same shift, stretched to σ 0.1
    assert len(official) == 31 and float(official[-2]) == pytest.approx(0.1) and float(official[-1]) == 0.0


def test_cli_distilled_schedule_runs_eight_steps(tmp_path):
    out = tmp_path / "d.mp4"
    r = invoke("generate", "--prompt", "x", "--model", "tiny", "--schedule", "distilled", "--width", 64,
               "--height", 64, "--frames", 9, "--out", out, "--json")
    assert r.exit_code == 0, r.output
    side = json.loads(r.stdout)
    assert side["steps"] == 8 and side["schedule"] == "distilled"
    r = invoke("generate", "--prompt", "x", "--model", "tiny", "--schedule", "fast", "--width", 64)
    assert r.exit_code == 2 and "--schedule 'fast'" in r.output


# ------------------------------------------------------------------------------------------------ --batch
def test_batch_two_rows_one_bad(files, tmp_path):
    rows = [
        {"prompt": "a red ball", "seed": 3, "out": str(tmp_path / "one.mp4")},
        {"prompt": "a blue ball", "lora": "no-such-lora"},
        "not an object",
    ]
    batch = tmp_path / "rows.jsonl"
    batch.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n{broken\n")
    r = invoke("generate", "--batch", batch, "--model", "tiny", "--width", 64, "--height", 64, "--frames", 9,
               "--steps", 1, "--out", tmp_path / "b.mp4", "--json")
    assert r.exit_code == 1, r.output
    res = json.loads(r.stdout)
    assert [x["line"] for x in res] == [1, 2, 3, 5]
    assert res[0]["seed"] == 3 and res[0]["prompt"] == "a red ball" and "error" not in res[0]
    assert (tmp_path / "one.mp4").is_file() and json.loads((tmp_path / "one.json").read_text())["seed"] == 3
    assert "no-such-lora" in res[1]["error"] and "JSON object" in res[2]["error"] and "not JSON" in res[3]["error"]
    errors = [line for line in r.stderr.splitlines() if "error:" in line]
    assert len(errors) == 3 and errors[0].startswith("avctl generate: rows.jsonl line 2: error: LoRA 'no-such-lora'")
    assert not (tmp_path / "b-002.mp4").exists()
    # Missing keys take the flags, and a row without "out" writes OUT-<line>.mp4.
    batch.write_text(json.dumps({"prompt": "p", "frames": 9}) + "\n")
    r = invoke("generate", "--batch", batch, "--model", "tiny", "--width", 64, "--height", 64, "--frames", 17,
               "--steps", 1, "--seed", 9, "--out", tmp_path / "b.mp4")
    assert r.exit_code == 0, r.output
    side = json.loads((tmp_path / "b-001.json").read_text())
    assert side["seed"] == 9 and side["size"]["frames"] == 9


# ------------------------------------------------------------------------------------------------ bad input
def test_cli_bad_input_messages(files, tmp_path):
    ctrl = tmp_path / "ctrl.mp4"
    write_video(ctrl, synthetic_frames(12, 64, 64), 24.0)
    base = ["generate", "--prompt", "x", "--model", "tiny", "--width", 64, "--height", 64, "--steps", 1]

    other = make_lora(tmp_path / "other.safetensors", ("V.SA",), 2, 7, streams=["video"],
                      base_config_hash="0123456789abcdef", base_model="Lightricks/LTX-2")
    r = invoke(*base, "--lora", other, "--control", ctrl, "--frames", 9, "--out", tmp_path / "a.mp4")
    assert r.exit_code == 0, r.output
    assert "warning: other.safetensors: trained on Lightricks/LTX-2 (config hash 0123456789abcdef)" in r.stderr
    assert "control has 12 frames; using the first 9" in r.stderr  # longer: cut, with a warning

    r = invoke(*base, "--lora", other, "--control", ctrl, "--frames", 17, "--out", tmp_path / "b.mp4")
    assert r.exit_code == 1 and "has 12 frames, the generation needs 17; pass --frames 9" in r.output

    r = invoke(*base, "--lora", files["video"], "--control", "canny=" + str(ctrl), "--out", tmp_path / "c.mp4",
               "--json")
    assert r.exit_code == 0, r.output  # named by modality; frames default to the control's, cut to 1 + 8k
    assert json.loads(r.stdout)["size"]["frames"] == 9

    garbage = tmp_path / "broken.mp4"
    garbage.write_bytes(b"\x00not a video at all" * 50)
    r = invoke(*base, "--lora", files["video"], "--control", garbage, "--frames", 9, "--out", tmp_path / "d.mp4")
    out_lines = [line for line in r.output.splitlines() if line.strip()]
    assert r.exit_code == 1 and "broken.mp4" in r.output and len(out_lines) == 1 and "Traceback" not in r.output

    wide = fresh_transformer()
    add_lora(wide, ("V.SA",), rank=4)
    sd = {k: (torch.zeros(4, v.shape[1] + 8) if "lora_A" in k else v) for k, v in lora_state_dict(wide).items()}
    misfit = tmp_path / "misfit.safetensors"
    save_lora(misfit, sd, downscale=1, avctl_meta={"streams": ["video"]})
    r = invoke(*base, "--lora", misfit, "--control", ctrl, "--frames", 9, "--out", tmp_path / "e.mp4")
    assert r.exit_code == 1 and "does not fit this model" in r.output and "Traceback" not in r.output

    r = invoke(*base, "--lora", files["audio"], "--control", ctrl, "--frames", 9, "--out", tmp_path / "f.mp4")
    assert r.exit_code == 1 and "has no audio stream" in r.output  # an audio LoRA needs sound

    r = invoke(*base, "--lora", files["video"], "--control", "nosuch=" + str(ctrl), "--out", tmp_path / "g.mp4")
    assert r.exit_code == 2 and "no --lora named 'nosuch'" in r.output


def test_cli_composite_with_an_audio_lora(files, tmp_path):
    from avctl.media import write_wav

    edges, depth, voice = tmp_path / "edges.mp4", tmp_path / "depth.mp4", tmp_path / "voice.wav"
    write_video(edges, synthetic_frames(9, 64, 64, seed=1), 24.0)
    write_video(depth, synthetic_frames(9, 64, 64, seed=2), 24.0)
    write_wav(voice, tone(1.0), 48_000)  # resampled to the model's rate when read
    r = invoke("generate", "--prompt", "x", "--model", "tiny", "--lora", files["video"], "--lora", files["depth"],
               "--lora", files["audio"], "--control", f"speech-ambient={voice}", "--control", f"depth={depth}",
               "--control", f"canny={edges}", "--composite", "--steps", 1, "--out", tmp_path / "c.mp4", "--json")
    assert r.exit_code == 0, r.output
    side = json.loads(r.stdout)
    assert side["composite"] is True and side["control"] == [str(edges), str(depth), str(voice)]
    assert [x["stream"] for x in side["loras"]] == ["video", "video", "audio"]
    assert any("audio control lasts 1.00 s" in w for w in side["warnings"])
    r = invoke("generate", "--prompt", "x", "--model", "tiny", "--lora", files["video"], "--lora", files["video1"],
               "--control", edges, "--control", depth, "--composite", "--out", tmp_path / "d.mp4")
    assert r.exit_code == 2 and "canny.safetensors has 2, detail.safetensors has 1" in r.output


def test_cli_camera_renders_the_control_and_eval_reads_the_trajectory(files, tmp_path):
    """--camera renders --image along a preset (holes #66FF00) as the camera-image LoRA's control, keeps it and the
    trajectory next to the output, and `eval --runs` measures the rotation error against that trajectory."""
    lora = make_lora(tmp_path / "camera.safetensors", ("V.SA",), 4, 5, modality="camera-image", streams=["video"])
    image = tmp_path / "image.png"
    cv2.imwrite(str(image), cv2.cvtColor(synthetic_frames(1, 128, 128, seed=2)[0], cv2.COLOR_RGB2BGR))
    depth = np.full((128, 128), 3.0, dtype=np.float32)  # 4× needs multiples of 128 px on the tiny VAE
    depth[40:88, 40:88] = 1.0  # a near box in front of a far wall: moving sideways uncovers wall
    np.save(tmp_path / "depth.npy", depth)
    out = tmp_path / "runs" / "cam.mp4"
    base = ["generate", "--prompt", "a box", "--model", "tiny", "--lora", lora, "--frames", 9, "--steps", 2]
    r = invoke(*base, "--image", image, "--camera", "truck-right", "--depth", tmp_path / "depth.npy",
               "--out", out, "--json")
    assert r.exit_code == 0, r.output
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["camera"] == "truck-right" and Path(side["camera_file"]).is_file()
    control = read_video(Path(side["control"][0])).frames
    assert control.shape == (9, 32, 32, 3)  # 4× canvas
    green = (np.abs(control.astype(int) - (0x66, 0xFF, 0x00)).max(-1) <= 40).mean(axis=(1, 2))
    assert green[0] < 0.05 and green[-1] > 0.05  # frame 0 is the image itself; the move uncovers holes

    r = invoke("eval", "--runs", out.parent, "--json")
    assert r.exit_code == 0, r.output
    row = json.loads(r.stdout)[0]
    assert row["compared"]["camera"] == side["camera_file"]
    assert "rotation_error_deg" in row["metrics"] or "rotation_error_deg" in row["not_available"]

    r = invoke(*base, "--image", image, "--camera", "no-such-move", "--out", tmp_path / "x.mp4")
    assert r.exit_code == 2 and "not a preset" in r.output
    r = invoke(*base, "--camera", "pan-left", "--width", 128, "--height", 128, "--out", tmp_path / "y.mp4")
    assert r.exit_code == 2 and "--image" in r.output
    r = invoke("generate", "--prompt", "p", "--model", "tiny", "--lora", files["video"], "--camera", "pan-left",
               "--image", image, "--frames", 9, "--out", tmp_path / "z.mp4")
    assert r.exit_code == 2 and "camera-image or camera-video" in r.output


def test_cli_keep_video_generates_only_the_audio(files, tmp_path):
    """--keep-video: the given video is the output's video (clean context, never moved) and the audio LoRA's
    audio is generated; --keep-audio / --keep-video together are refused."""
    clip = write_synthetic_clip(tmp_path / "clip.mp4", frames=12, width=64, height=64, fps=24.0)
    voice = tmp_path / "voice.wav"
    from avctl.media import write_wav

    write_wav(voice, tone(0.5), 48_000)
    out = tmp_path / "dub.mp4"
    r = invoke("generate", "--prompt", "rain on a roof", "--model", "tiny", "--lora", files["audio"],
               "--control", voice, "--keep-video", clip, "--frames", 9, "--steps", 2, "--out", out, "--json")
    assert r.exit_code == 0, r.output
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["keep_video"] == str(clip) and side["size"]["width"] == 64
    given, made = read_video(clip).frames[:9].astype(int), read_video(out).frames.astype(int)
    assert made.shape == (9, 64, 64, 3) and np.abs(made - given).mean() < 4  # the same video, re-encoded once
    r = invoke("generate", "--prompt", "p", "--model", "tiny", "--lora", files["audio"], "--control", voice,
               "--keep-video", clip, "--keep-audio", voice, "--frames", 9, "--out", tmp_path / "x.mp4")
    assert r.exit_code == 2 and "keep one stream" in r.output


def test_cli_keep_audio_keeps_the_given_sound(files, tmp_path):
    """--keep-audio: the given sound (bursts) is the output's audio, the video is generated."""
    from avctl.media import write_wav
    from avctl.metrics import audio_envelope_correlation

    seconds = 9 / 24.0
    t = np.arange(round(seconds * 48_000)) / 48_000
    bursts = (tone(seconds) * (np.sin(2 * np.pi * 6 * t) > 0)).astype(np.float32)  # on/off 6 times a second
    speech = tmp_path / "speech.wav"
    write_wav(speech, bursts, 48_000)
    out = tmp_path / "talk.mp4"
    r = invoke("generate", "--prompt", "a person talks", "--model", "tiny", "--lora", files["video1"], "--control",
               write_synthetic_clip(tmp_path / "c.mp4", frames=9, width=64, height=64, fps=24.0), "--keep-audio",
               speech, "--frames", 9, "--steps", 2, "--out", out, "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(out.with_suffix(".json").read_text())["keep_audio"] == str(speech)
    given, made = read_audio(speech, 16_000, 1), read_audio(out, 16_000, 1)
    n = min(given.shape[1], made.shape[1])
    assert audio_envelope_correlation(given[:, :n], made[:, :n], 16_000) > 0.9
