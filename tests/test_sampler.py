"""The sampler is LTX-2's own: on `pocket`, `avctl generate` with no LoRA is the same computation as diffusers'
`LTX2Pipeline` loaded from the same directory (latents within 1e-4, frames within 1/255), with the official guidance
and with none; each guidance term changes the result; presets come from the model's files; STG survives avctl's
strength processor."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from avctl.backbone import POCKET_DIR, load_backbone
from avctl.cli import app
from avctl.errors import BadUsage
from avctl.sample import PRESETS, Guidance, detect_preset, generate, pipeline_latents, scale_stg_blocks

PROMPT = "a red ball rolls across the grass"
SIZE = {"width": 64, "height": 64, "frames": 17}
STEPS = 8
OFFICIAL = replace(PRESETS["ltx2"].guidance, stg_blocks=(1,))  # pocket has 4 blocks: STG on block 1


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def pocket():
    return load_backbone("pocket", device="cpu")


@pytest.fixture(scope="module")
def pipe():
    from diffusers import LTX2Pipeline

    p = LTX2Pipeline.from_pretrained(str(POCKET_DIR), local_files_only=True)
    p.set_progress_bar_config(disable=True)
    return p


def pipeline_run(pipe, g: Guidance, output_type: str):
    return pipe(
        prompt=PROMPT, num_frames=SIZE["frames"], width=SIZE["width"], height=SIZE["height"],
        num_inference_steps=STEPS, generator=torch.Generator().manual_seed(42), output_type=output_type,
        max_sequence_length=pipe.tokenizer.model_max_length,  # avctl pads to the tokenizer's limit
        guidance_scale=g.cfg, audio_guidance_scale=g.audio_cfg, stg_scale=g.stg, audio_stg_scale=g.audio_stg,
        modality_scale=g.modality, audio_modality_scale=g.audio_modality, guidance_rescale=g.rescale,
        audio_guidance_rescale=g.audio_rescale, spatio_temporal_guidance_blocks=list(g.stg_blocks) or None,
        use_cross_timestep=bool(g.cross_timestep), return_dict=False,
    )


def avctl_run(pocket, g: Guidance):
    return generate(pocket, PROMPT, [], **SIZE, steps=STEPS, seed=42, preset="ltx2", guidance=g)


def assert_parity(pocket, pipe, ours, g: Guidance) -> None:
    video, audio = pipeline_run(pipe, g, "latent")
    mine = pipeline_latents(pocket, ours.final_latents)
    assert mine["video"].shape == video.shape and mine["audio"].shape == audio.shape
    assert (mine["video"] - video).abs().max() < 1e-4
    assert (mine["audio"] - audio).abs().max() < 1e-4
    frames, _ = pipeline_run(pipe, g, "np")  # [1, F, H, W, 3] floats in [0, 1], before any mp4 encoding
    assert np.abs(frames[0] - ours.frames.astype(np.float32) / 255).max() <= 1 / 255


def test_matches_ltx2pipeline_with_official_guidance(pocket, pipe):
    ours = avctl_run(pocket, OFFICIAL)
    assert ours.settings["guidance"]["stg_blocks"] == [1] and ours.settings["schedule"] == "official"
    assert ours.settings["sigmas"][-2] == pytest.approx(0.1)  # stretched to the scheduler's terminal σ
    assert_parity(pocket, pipe, ours, OFFICIAL)


def test_matches_ltx2pipeline_without_guidance_and_with_cross_timestep(pocket, pipe):
    off = Guidance(cross_timestep=True)
    assert_parity(pocket, pipe, avctl_run(pocket, off), off)


def test_each_guidance_term_changes_the_latents(pocket):
    base = avctl_run(pocket, OFFICIAL).final_latents
    for drop in ({"cfg": 1.0, "audio_cfg": 1.0}, {"stg": 0.0, "audio_stg": 0.0},
                 {"modality": 1.0, "audio_modality": 1.0}, {"rescale": 0.0, "audio_rescale": 0.0}):
        other = avctl_run(pocket, replace(OFFICIAL, **drop)).final_latents
        for stream in ("video", "audio"):
            assert (other[stream] - base[stream]).abs().max() > 1e-3, (drop, stream)


def test_stg_acts_through_the_strength_processor(pocket):
    """avctl's strength processor sits on every self-attention; the STG pass must still skip block 1's."""
    from avctl.canvas import Canvas, build_stream
    from avctl.forward import predict

    tr = pocket.transformer
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, tr.config.in_channels, 2, 4, 4, generator=g)
    a = torch.randn(1, 2, 5, 16, generator=g)
    sigma = torch.tensor([0.5])
    canvas = Canvas(build_stream("video", tr, x, sigma), build_stream("audio", tr, a, sigma))
    text = pocket.encode_text([PROMPT])
    with torch.no_grad():
        plain = predict(tr, canvas, text.video, text.audio, text.mask)
        stg = predict(tr, canvas, text.video, text.audio, text.mask, stg_blocks=[1])
    assert type(tr.transformer_blocks[1].attn1.processor).__name__ == "StrengthAttnProcessor"
    assert (plain[0] - stg[0]).abs().max() > 1e-3 and (plain[1] - stg[1]).abs().max() > 1e-3


def test_presets_come_from_the_model_files(pocket, tmp_path):
    assert detect_preset(pocket) == "ltx2"
    assert json.loads((POCKET_DIR / "transformer" / "config.json").read_text())["perturbed_attn"] is True
    assert scale_stg_blocks((29,), 4) == (2,) and scale_stg_blocks((29,), 48) == (29,)
    # The same weights in a folder named "distilled" stay ltx2; a scheduler config without dynamic shifting
    # (the distilled checkpoints') makes them distilled.
    import shutil

    copy = tmp_path / "ltx-2-distilled"
    shutil.copytree(POCKET_DIR, copy)
    assert detect_preset(load_backbone(str(copy), device="cpu", components={"transformer"})) == "ltx2"
    config = json.loads((copy / "scheduler" / "scheduler_config.json").read_text())
    config.update(use_dynamic_shifting=False, shift_terminal=None)
    (copy / "scheduler" / "scheduler_config.json").write_text(json.dumps(config))
    assert detect_preset(load_backbone(str(copy), device="cpu", components={"transformer"})) == "distilled"
    with pytest.raises(BadUsage, match="blocks 0-3"):
        generate(pocket, PROMPT, [], **SIZE, steps=1, preset="ltx2", guidance=replace(OFFICIAL, stg_blocks=(7,)))


def test_cli_flags_override_the_preset_and_save_latents(tmp_path, pocket):
    out, lat = tmp_path / "g.mp4", tmp_path / "g.safetensors"
    r = CliRunner().invoke(app, [
        "generate", "--model", "pocket", "--prompt", PROMPT, "--width", "64", "--height", "64", "--frames", "17",
        "--steps", "2", "--preset", "ltx2", "--audio-guidance-scale", "5", "--modality-scale", "1",
        "--stg-blocks", "1", "--save-latents", str(lat), "--out", str(out), "--json",
    ], env={"AVCTL_NO_PROGRESS": "1"})
    assert r.exit_code == 0, r.output
    side = json.loads(out.with_suffix(".json").read_text())
    g = side["sampler"]["guidance"]
    assert (g["cfg"], g["audio_cfg"], g["modality"], g["stg_blocks"]) == (3.0, 5.0, 1.0, [1])
    assert side["sampler"]["preset"] == "ltx2" and side["latents"] == str(lat)
    saved = load_file(str(lat))
    again = generate(pocket, PROMPT, [], **SIZE, steps=2, seed=42, preset="ltx2",
                     guidance=replace(OFFICIAL, audio_cfg=5.0, modality=1.0))
    expected = pipeline_latents(pocket, again.final_latents)
    assert set(saved) == {"video", "audio"}
    assert torch.allclose(saved["video"], expected["video"], atol=1e-5)
    assert torch.allclose(saved["audio"], expected["audio"], atol=1e-5)
    bad = CliRunner().invoke(app, ["generate", "--model", "pocket", "--prompt", "x", "--preset", "best"])
    assert bad.exit_code == 2 and "--preset 'best'" in bad.output


def test_preset_ltx2_with_a_canny_lora_on_pocket(pocket, tmp_path):
    """With a LoRA and its control the guided sampler stays on the canvas: the reference steers the guided output,
    and the preset's STG block (29 of LTX-2's 48) lands on pocket's block 2, with a note."""
    from avctl.lora import add_lora, lora_state_dict, read_lora, save_lora
    from avctl.sample import LoraUse

    tr = load_backbone("pocket", device="cpu", components={"transformer"}).transformer
    add_lora(tr, ("V.SA",), rank=4)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for n, p in tr.named_parameters():
            if "lora_" in n:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    path = tmp_path / "canny.safetensors"
    save_lora(path, lora_state_dict(tr), downscale=2, avctl_meta={"modality": "canny", "streams": ["video"]})
    control = (np.random.default_rng(0).random((17, 32, 32, 3)) * 255).astype(np.uint8)
    use = [LoraUse(read_lora(path), 1.0, control)]
    full = generate(pocket, PROMPT, use, **SIZE, steps=2, preset="ltx2", strength=1.0)
    none = generate(pocket, PROMPT, use, **SIZE, steps=2, preset="ltx2", strength=0.0)
    assert full.settings["guidance"]["stg_blocks"] == [2] and any("block 2" in w for w in full.warnings)
    assert torch.isfinite(full.final_latents["video"]).all()
    assert (full.final_latents["video"] - none.final_latents["video"]).abs().max() > 1e-3


# ------------------------------------------------------------------------------------------------ two stages
def tiny_upsampler(folder, channels: int):
    """A random LTX2LatentUpsamplerModel (diffusers' class), saved as a folder."""
    from diffusers.pipelines.ltx2.latent_upsampler import LTX2LatentUpsamplerModel

    torch.manual_seed(0)
    model = LTX2LatentUpsamplerModel(in_channels=channels, mid_channels=32, num_blocks_per_stage=1)
    model.save_pretrained(folder)
    return folder


def random_lora(path, model: str, seed: int, zero: bool = False, downscale: int = 1, modality: str = "distilled"):
    from avctl.lora import add_lora, lora_state_dict, save_lora

    tr = load_backbone(model, device="cpu", components={"transformer"}).transformer
    add_lora(tr, ("V.SA", "A.SA"), rank=4)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in tr.named_parameters():
            if "lora_" in n:
                p.copy_(torch.zeros_like(p) if zero and "lora_B" in n else torch.randn(p.shape, generator=gen) * 0.05)
    save_lora(path, lora_state_dict(tr), downscale=downscale, avctl_meta={"modality": modality, "streams": ["video"]})
    return path


def test_two_stage_matches_diffusers_chain_on_pocket(pocket, pipe, tmp_path):
    """Stage 1 at half size, LTX2LatentUpsamplePipeline, stage 2 from the re-noised latents over the stage-2
    distilled sigmas: the same latents as diffusers' own two-stage chain (a distilled LoRA with zero effect, so the
    pipeline needs none)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, LTX2LatentUpsamplePipeline
    from diffusers.pipelines.ltx2.utils import STAGE_2_DISTILLED_SIGMA_VALUES

    from avctl.lora import read_lora
    from avctl.sample import TwoStage, load_upsampler

    folder = tiny_upsampler(tmp_path / "up", pocket.transformer.config.in_channels)
    lora = read_lora(random_lora(tmp_path / "distilled.safetensors", "pocket", 3, zero=True))
    g = replace(OFFICIAL, audio_cfg=3.0)
    ours = generate(pocket, PROMPT, [], **SIZE, steps=4, seed=42, preset="ltx2", guidance=g,
                    two_stage=TwoStage(load_upsampler(folder), lora))
    assert ours.steps == 4 + 3 and ours.settings["two_stage"]["stage1_size"] == [32, 32]

    kw = {"prompt": PROMPT, "num_frames": SIZE["frames"], "max_sequence_length": pipe.tokenizer.model_max_length,
          "return_dict": False, "output_type": "latent", "use_cross_timestep": False}
    video, audio = pipe(width=32, height=32, num_inference_steps=4, generator=torch.Generator().manual_seed(42),
                        guidance_scale=g.cfg, audio_guidance_scale=g.audio_cfg, stg_scale=g.stg,
                        audio_stg_scale=g.audio_stg, modality_scale=g.modality, audio_modality_scale=g.audio_modality,
                        guidance_rescale=g.rescale, audio_guidance_rescale=g.audio_rescale,
                        spatio_temporal_guidance_blocks=[1], **kw)
    up = LTX2LatentUpsamplePipeline(vae=pipe.vae, latent_upsampler=load_upsampler(folder))
    video = up(latents=video, height=32, width=32, num_frames=SIZE["frames"], output_type="latent",
               return_dict=False)[0]
    first = pipe.scheduler
    pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(first.config, use_dynamic_shifting=False,
                                                                 shift_terminal=None)
    try:
        video, audio = pipe(width=64, height=64, latents=video, audio_latents=audio, num_inference_steps=3,
                            sigmas=STAGE_2_DISTILLED_SIGMA_VALUES, noise_scale=STAGE_2_DISTILLED_SIGMA_VALUES[0],
                            generator=torch.Generator().manual_seed(42), guidance_scale=1.0, audio_guidance_scale=1.0,
                            stg_scale=0.0, audio_stg_scale=0.0, modality_scale=1.0, audio_modality_scale=1.0,
                            guidance_rescale=0.0, audio_guidance_rescale=0.0, **kw)
    finally:
        pipe.scheduler = first
    mine = pipeline_latents(pocket, ours.final_latents)
    assert mine["video"].shape == video.shape == (1, 16, 5, 8, 8)
    assert (mine["video"] - video).abs().max() < 1e-4 and (mine["audio"] - audio).abs().max() < 1e-4


def test_cli_two_stage_on_tiny(tmp_path):
    from avctl.backbone import load_backbone as load

    folder = tiny_upsampler(tmp_path / "up", load("tiny", device="cpu", components={"transformer"})
                            .transformer.config.in_channels)
    lora = random_lora(tmp_path / "distilled.safetensors", "tiny", 5)
    out = tmp_path / "two.mp4"
    args = ["generate", "--model", "tiny", "--prompt", "a red ball", "--width", "128", "--height", "128",
            "--frames", "9", "--steps", "2", "--preset", "plain", "--out", str(out)]
    r = CliRunner().invoke(app, [*args, "--two-stage", "--upsampler", str(folder), "--distilled-lora", str(lora)],
                           env={"AVCTL_NO_PROGRESS": "1"})
    assert r.exit_code == 0, r.output
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["steps"] == 2 + 3 and side["sampler"]["two_stage"]["stage1_size"] == [64, 64]
    assert side["sampler"]["two_stage"]["stage2_sigmas"][0] == pytest.approx(0.909375)
    from avctl.media import read_video

    assert read_video(out).frames.shape == (9, 128, 128, 3)
    bad = CliRunner().invoke(app, [*args[:-1], str(tmp_path / "b.mp4"), "--two-stage"])
    assert bad.exit_code == 2 and "--upsampler" in bad.output
    bad = CliRunner().invoke(app, [*args[:6], "96", *args[7:-1], str(tmp_path / "c.mp4"), "--two-stage",
                                   "--upsampler", str(folder), "--distilled-lora", str(lora)])
    assert bad.exit_code == 2 and "multiples of 64" in bad.output


def test_two_stage_re_encodes_references_at_each_stage_size(tmp_path):
    """A control LoRA (2× reference) in a two-stage run: stage 1 attends to the control at 64/2, stage 2 at 128/2."""
    from avctl.lora import read_lora
    from avctl.sample import LoraUse, TwoStage, load_upsampler

    tiny = load_backbone("tiny", device="cpu")
    folder = tiny_upsampler(tmp_path / "up", tiny.transformer.config.in_channels)
    stages = TwoStage(load_upsampler(folder), read_lora(random_lora(tmp_path / "d.safetensors", "tiny", 5)))
    lora = read_lora(random_lora(tmp_path / "canny.safetensors", "tiny", 7, downscale=2, modality="canny"))
    control = (np.random.default_rng(0).random((9, 128, 128, 3)) * 255).astype(np.uint8)
    shapes: list[tuple[int, ...]] = []
    encode = tiny.encode_video
    tiny.encode_video = lambda frames: (shapes.append(tuple(frames.shape)), encode(frames))[1]
    out = generate(tiny, "a red ball", [LoraUse(lora, 1.0, control)], width=128, height=128, frames=9, steps=2,
                   preset="plain", two_stage=stages)
    assert shapes == [(1, 9, 32, 32, 3), (1, 9, 64, 64, 3)]
    assert out.frames.shape == (9, 128, 128, 3)


def test_stg_mask_per_sample_with_strength_biases(pocket):
    """A per-sample perturbation mask (diffusers' `perturbation_mask`, 0 = perturbed) with a reference at strength
    0.5 (so the strength processor builds biases): each sample matches its own all-or-nothing run."""
    from avctl.canvas import Canvas, Reference, build_stream
    from avctl.strength import set_strength

    tr = pocket.transformer
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, tr.config.in_channels, 2, 4, 4, generator=g)
    ref = Reference(torch.randn(2, tr.config.in_channels, 2, 2, 2, generator=g), downscale=2, strength=0.5)
    a = torch.randn(2, 2, 5, 16, generator=g)
    sigma = torch.tensor([0.5, 0.5])
    canvas = Canvas(build_stream("video", tr, x, sigma, [ref]), build_stream("audio", tr, a, sigma))
    text = pocket.encode_text([PROMPT, PROMPT])

    def run(mask):
        set_strength(tr, canvas)
        with torch.no_grad():
            return tr(hidden_states=canvas.video.tokens, audio_hidden_states=canvas.audio.tokens,
                      encoder_hidden_states=text.video, audio_encoder_hidden_states=text.audio,
                      timestep=canvas.video.timestep, audio_timestep=canvas.audio.timestep,
                      encoder_attention_mask=text.mask, audio_encoder_attention_mask=text.mask,
                      video_coords=canvas.video.coords, audio_coords=canvas.audio.coords,
                      spatio_temporal_guidance_blocks=[1], perturbation_mask=mask, return_dict=False)[0]

    mixed, skipped, plain = run(torch.tensor([0.0, 1.0])), run(torch.zeros(2)), run(torch.ones(2))
    assert torch.allclose(mixed[0], skipped[0], atol=1e-5) and torch.allclose(mixed[1], plain[1], atol=1e-5)
    assert (skipped[0] - plain[0]).abs().max() > 1e-3
