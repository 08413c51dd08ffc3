"""avctl.backbone: the tiny preset, one pipeline end to end, normalisation, save/load, and error paths."""

from __future__ import annotations

import math
import os

os.environ["HF_HUB_OFFLINE"] = "1"

import time
from pathlib import Path

import pytest
import torch

from avctl.backbone import COMPONENTS, Backbone, TextEmbeddings, load_backbone
from avctl.errors import BadInput, BadUsage, MissingWeights

PROMPTS = ["a red ball rolls on the grass", "a dog runs across the beach at sunset"]


@pytest.fixture(scope="module")
def tiny() -> Backbone:
    return load_backbone("tiny", device="cpu")


def _frames(batch: int, frames: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    """[B, F, H, W, 3] uint8: a smooth gradient with a square moving right, so every frame differs."""
    gen = torch.Generator().manual_seed(seed)
    ys = torch.linspace(0, 1, height)[:, None].expand(height, width)
    xs = torch.linspace(0, 1, width)[None, :].expand(height, width)
    out = torch.empty(batch, frames, height, width, 3, dtype=torch.uint8)
    for b in range(batch):
        tint = torch.rand(3, generator=gen)
        for f in range(frames):
            img = torch.stack([xs * tint[0], ys * tint[1], (xs + ys) / 2 * tint[2]], -1) * 255  # [H, W, 3]
            left = f * (width - height // 4) // max(1, frames - 1)
            img[height // 3 : height // 3 + height // 4, left : left + height // 4] = 255
            out[b, f] = img.round().to(torch.uint8)
    return out


def _waveform(batch: int, seconds: float, rate: int, freq: float = 440.0) -> torch.Tensor:
    """[B, 2, N] stereo sine (right channel an octave up), amplitude 0.5."""
    t = torch.arange(round(seconds * rate)) / rate
    left = 0.5 * torch.sin(2 * math.pi * freq * t)
    right = 0.5 * torch.sin(2 * math.pi * 2 * freq * t)
    return torch.stack([left, right])[None].expand(batch, -1, -1).clone()


def _forward(bb: Backbone, video: torch.Tensor, audio: torch.Tensor, text: TextEmbeddings, sigma: float = 0.7):
    """One transformer call on packed tokens with per-token timesteps; returns (video_out, audio_out)."""
    _, _, frames, height, width = video.shape
    video_tokens = video.flatten(2).transpose(1, 2)  # [B, F·H·W, C]
    audio_tokens = audio.transpose(1, 2).flatten(2, 3)  # [B, T, C·M]
    timestep = torch.full(video_tokens.shape[:2], 1000 * sigma)  # [B, T_v]
    audio_timestep = torch.full(audio_tokens.shape[:2], 1000 * sigma)  # [B, T_a]
    return bb.transformer(
        hidden_states=video_tokens,
        audio_hidden_states=audio_tokens,
        encoder_hidden_states=text.video,
        audio_encoder_hidden_states=text.audio,
        timestep=timestep,
        audio_timestep=audio_timestep,
        encoder_attention_mask=text.mask,
        audio_encoder_attention_mask=text.mask,
        num_frames=frames,
        height=height,
        width=width,
        fps=24.0,
        audio_num_frames=audio_tokens.shape[1],
        return_dict=False,
    )


def _state(bb: Backbone) -> dict[str, torch.Tensor]:
    return {f"{n}.{k}": v for n, m in bb._modules().items() for k, v in m.state_dict().items()}


def test_tiny_is_deterministic_and_leaves_the_global_rng_alone(tiny: Backbone) -> None:
    torch.manual_seed(123)
    expected = torch.rand(4)
    torch.manual_seed(123)
    again = load_backbone("tiny", device="cpu")
    assert torch.equal(torch.rand(4), expected)  # the preset seeds a forked RNG

    first, second = _state(tiny), _state(again)
    assert first.keys() == second.keys() and len(first) > 100
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert tiny.config_hash() == again.config_hash()
    assert len(tiny.config_hash()) == 16 and int(tiny.config_hash(), 16) >= 0
    # The hash covers every component, loaded or not, and changes when a config does.
    assert load_backbone("tiny", device="cpu", components={"transformer"}).config_hash() == tiny.config_hash()
    changed = Backbone(**{**tiny.__dict__, "configs": {**tiny.configs, "vae": {**tiny.configs["vae"], "x": 1}}})
    assert changed.config_hash() != tiny.config_hash()


def test_tiny_parts_fit_as_one_pipeline(tiny: Backbone) -> None:
    tr, vae, avae = tiny.transformer.config, tiny.vae, tiny.audio_vae
    assert (tiny.vae_spatial, tiny.vae_temporal) == (32, 8)
    assert (tiny.audio_sample_rate, tiny.audio_hop, tiny.mel_bins, tiny.audio_temporal) == (16000, 160, 64, 4)
    assert tiny.vocoder_sample_rate == 24000
    assert tr.in_channels == vae.config.latent_channels
    packed_audio = tiny.audio_latent_channels * tiny.mel_bins // 4
    assert tr.audio_in_channels == packed_audio == avae.latents_mean.numel() == avae.latents_std.numel()
    text = tiny.text_encoder.config.get_text_config()
    assert tr.caption_channels == text.hidden_size == tiny.connectors.config.caption_channels
    assert tiny.connectors.config.text_proj_in_factor == text.num_hidden_layers + 1
    assert tiny.vocoder.config.in_channels == 2 * tiny.mel_bins
    assert tr.rope_type == "split"
    # The tokenizer is word-level, left-padded, and starts every prompt with <bos> as Gemma's does.
    tok = tiny.tokenizer
    assert tok.padding_side == "left"
    assert tok.tokenize("A red ball, rolling!") == ["a", "red", "ball", ",", "rolling", "!"]
    ids = tok("zebra dog", padding="max_length", max_length=6).input_ids
    assert ids == [tok.pad_token_id] * 3 + [tok.bos_token_id, tok.unk_token_id, tok.convert_tokens_to_ids("dog")]


def test_one_pipeline_end_to_end(tiny: Backbone) -> None:
    batch = 2
    text = tiny.encode_text(PROMPTS)
    assert text.video.shape[:2] == text.audio.shape[:2] == text.mask.shape
    assert text.video.shape[0] == batch and text.video.shape[2] == tiny.transformer.config.caption_channels
    assert not torch.allclose(text.video[0], text.video[1])  # different prompts, different context
    assert torch.equal(tiny.encode_text(PROMPTS[:1]).video[0], text.video[0])  # batch-independent, deterministic

    frames = _frames(batch, 9, 64, 96)
    video = tiny.encode_video(frames)
    assert video.shape == (batch, 16, *tiny.latent_grid(9, 64, 96)) == (batch, 16, 2, 2, 3)
    assert torch.equal(tiny.encode_video(frames), video)  # the posterior mean, not a sample

    seconds = 1.0
    mel = tiny.waveform_to_mel(_waveform(batch, seconds, tiny.audio_sample_rate))
    assert mel.shape == (batch, 2, 101, 64)
    audio = tiny.encode_audio(mel)
    assert audio.shape == (batch, tiny.audio_latent_channels, tiny.audio_latent_frames(seconds), 16)

    video_out, audio_out = _forward(tiny, video, audio, text)
    assert video_out.shape == (batch, 2 * 2 * 3, 16) and audio_out.shape == (batch, 26, 32)
    assert torch.isfinite(video_out).all() and torch.isfinite(audio_out).all()
    assert video_out.std() > 1e-3 and audio_out.std() > 1e-3
    # Outputs depend on the inputs: the video tokens, the text, and the per-token timesteps.
    shifted, _ = _forward(tiny, video + 0.5, audio, text)
    assert (shifted - video_out).abs().max() > 1e-3
    other_text = TextEmbeddings(text.video.flip(0), text.audio.flip(0), text.mask)
    assert (_forward(tiny, video, audio, other_text)[0] - video_out).abs().max() > 1e-4
    assert (_forward(tiny, video, audio, text, sigma=0.1)[1] - audio_out).abs().max() > 1e-4

    # The flow-matching x0 estimate (x_t − σ·v) unpacks to the latent grid and decodes to frames of the input's shape.
    x0 = video - 0.7 * video_out.transpose(1, 2).reshape(video.shape)  # [B, C, F', H', W']
    decoded = tiny.decode_video(x0)
    assert decoded.shape == frames.shape and decoded.dtype == torch.uint8

    mel_back = tiny.decode_audio(audio)
    assert mel_back.shape == mel.shape
    wav = tiny.vocode(mel_back)
    hop_out = tiny.vocoder_sample_rate * tiny.audio_hop // tiny.audio_sample_rate  # one mel hop in output samples
    assert wav.shape[:2] == (batch, 2)
    assert abs(wav.shape[2] - seconds * tiny.vocoder_sample_rate) <= hop_out
    assert torch.isfinite(wav).all() and wav.abs().max() <= 1.0


def test_transformer_trains_through_packed_tokens(tiny: Backbone) -> None:
    text = tiny.encode_text(PROMPTS[:1])
    video = torch.randn(1, 16, 2, 5, 6)  # 60 video tokens
    audio = torch.randn(1, 2, 30, 16)  # 30 audio tokens
    model = tiny.transformer
    model.zero_grad()
    video_out, audio_out = _forward(tiny, video, audio, text)
    (video_out.square().mean() + audio_out.square().mean()).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0
    model.zero_grad()


def test_normalisation_is_the_pipelines_and_lines_up_with_packing() -> None:
    bb = load_backbone("tiny", device="cpu")
    vae, avae = bb.vae, bb.audio_vae
    vae.latents_mean.copy_(torch.linspace(-1, 1, vae.latents_mean.numel()))
    vae.latents_std.copy_(torch.linspace(0.5, 2, vae.latents_std.numel()))
    avae.latents_mean.copy_(torch.arange(avae.latents_mean.numel()) * 0.1)  # feature c·M + m gets 0.1·(c·M + m)
    avae.latents_std.copy_(1 + torch.arange(avae.latents_std.numel()) * 0.05)

    frames = _frames(1, 9, 32, 64, seed=3)
    with torch.no_grad():
        raw = vae.encode(frames.permute(0, 4, 1, 2, 3).float() / 127.5 - 1).latent_dist.mean  # [B, C, F, H, W]
    per_channel = (1, -1, 1, 1, 1)
    expected = (
        (raw - vae.latents_mean.view(per_channel)) * vae.config.scaling_factor / vae.latents_std.view(per_channel)
    )
    torch.testing.assert_close(bb.encode_video(frames), expected)

    mel = bb.waveform_to_mel(_waveform(1, 0.5, bb.audio_sample_rate))
    with torch.no_grad():
        raw_audio = avae.encode(mel).latent_dist.mean  # [B, C, T, M]
    channels, mel_latent = raw_audio.shape[1], raw_audio.shape[3]
    feature = torch.arange(channels)[:, None] * mel_latent + torch.arange(mel_latent)[None]  # [C, M]: c·M + m
    mean = avae.latents_mean[feature][None, :, None]  # [1, C, 1, M]
    std = avae.latents_std[feature][None, :, None]
    torch.testing.assert_close(bb.encode_audio(mel), (raw_audio - mean) / std)
    # And decode undoes it: decode_audio(encode_audio(mel)) is the VAE's own reconstruction.
    with torch.no_grad():
        reconstruction = avae.decode(raw_audio).sample
    torch.testing.assert_close(bb.decode_audio(bb.encode_audio(mel)), reconstruction)


def test_mel_front_end_is_a_log_mel_at_the_configured_rate(tiny: Backbone) -> None:
    rate, samples = tiny.audio_sample_rate, 8000
    silence = tiny.waveform_to_mel(torch.zeros(1, 2, samples))
    assert silence.shape == (1, 2, samples // tiny.audio_hop + 1, tiny.mel_bins)
    assert torch.allclose(silence, torch.full_like(silence, math.log(1e-5)))
    tone = tiny.waveform_to_mel(_waveform(1, samples / rate, rate, freq=1000.0))
    left_peak, right_peak = tone[0, 0, 10:-10].mean(0).argmax(), tone[0, 1, 10:-10].mean(0).argmax()
    assert right_peak > left_peak  # the right channel is an octave higher
    mono = tiny.waveform_to_mel(_waveform(1, samples / rate, rate)[:, :1])
    assert mono.shape[1] == 2 and torch.equal(mono[:, 0], mono[:, 1])


def test_audio_latent_frames_matches_encode_audio(tiny: Backbone) -> None:
    for seconds in (0.25, 0.37, 0.5, 1.0, 1.23):
        mel = tiny.waveform_to_mel(torch.zeros(1, 2, round(seconds * tiny.audio_sample_rate)))
        assert tiny.encode_audio(mel).shape[2] == tiny.audio_latent_frames(seconds)
    with pytest.raises(BadUsage):
        tiny.audio_latent_frames(0)


def test_latent_grid_checks_sizes_against_the_vae_factors(tiny: Backbone) -> None:
    t, s = tiny.vae_temporal, tiny.vae_spatial
    assert tiny.latent_grid(1, s, s) == (1, 1, 1)
    assert tiny.latent_grid(2 * t + 1, 2 * s, 3 * s) == (3, 2, 3)
    assert tiny.latent_grid(121, 512, 768) == (16, 16, 24)
    with pytest.raises(BadUsage, match="frames"):
        tiny.latent_grid(16, 64, 64)
    with pytest.raises(BadUsage, match="multiples of 32"):
        tiny.latent_grid(9, 100, 64)
    with pytest.raises(BadUsage):
        tiny.latent_grid(9, 64, 0)
    with pytest.raises(BadUsage):
        tiny.encode_video(_frames(1, 8, 64, 64))
    with pytest.raises(BadInput):
        tiny.encode_video(torch.zeros(1, 9, 64, 64, 3))  # float, not uint8


def test_save_pretrained_then_load_gives_identical_outputs(tiny: Backbone, tmp_path: Path) -> None:
    target = tmp_path / "models" / "tiny-copy"
    tiny.save_pretrained(target)
    assert {p.name for p in target.iterdir()} == set(COMPONENTS)
    loaded = load_backbone(str(target), device="cpu")
    assert loaded.model_id == str(target)
    assert loaded.config_hash() == tiny.config_hash()
    first, second = _state(tiny), _state(loaded)
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)

    text, text2 = tiny.encode_text(PROMPTS), loaded.encode_text(PROMPTS)
    assert torch.equal(text.video, text2.video) and torch.equal(text.audio, text2.audio)
    frames = _frames(1, 9, 32, 32)
    video, audio = tiny.encode_video(frames), tiny.encode_audio(tiny.waveform_to_mel(_waveform(1, 0.3, 16000)))
    assert torch.equal(video, loaded.encode_video(frames))
    out = _forward(tiny, video, audio, tiny.encode_text(PROMPTS[:1]))
    out2 = _forward(loaded, video, audio, loaded.encode_text(PROMPTS[:1]))
    assert torch.equal(out[0], out2[0]) and torch.equal(out[1], out2[1])
    assert torch.equal(tiny.vocode(tiny.decode_audio(audio)), loaded.vocode(loaded.decode_audio(audio)))

    # Saving again replaces the folder atomically and leaves no staging folders behind.
    loaded.save_pretrained(target)
    assert sorted(p.name for p in target.parent.iterdir()) == ["tiny-copy"]
    partial = load_backbone(str(target), device="cpu", components={"transformer", "vae"})
    assert partial.text_encoder is None and partial.audio_vae is None and partial.vae is not None
    assert partial.config_hash() == tiny.config_hash()

    not_a_model = tmp_path / "notes"
    not_a_model.mkdir()
    (not_a_model / "todo.txt").write_text("keep me")
    with pytest.raises(BadUsage):
        tiny.save_pretrained(not_a_model)
    assert (not_a_model / "todo.txt").read_text() == "keep me"


def test_components_subset_loads_only_what_is_asked(tiny: Backbone) -> None:
    bb = load_backbone("tiny", device="cpu", components={"transformer"})
    assert bb.transformer is not None
    assert all(getattr(bb, n) is None for n in COMPONENTS if n != "transformer")
    # Sizes the transformer's config also records still answer.
    assert (bb.vae_spatial, bb.vae_temporal, bb.audio_temporal) == (tiny.vae_spatial, tiny.vae_temporal, 4)
    assert bb.audio_latent_frames(1.0) == tiny.audio_latent_frames(1.0)
    with pytest.raises(BadUsage, match="vae"):
        bb.encode_video(_frames(1, 9, 32, 32))
    with pytest.raises(BadUsage, match=r"text_encoder|tokenizer"):
        bb.encode_text(["a dog"])
    with pytest.raises(BadUsage, match="unknown"):
        load_backbone("tiny", device="cpu", components={"transformer", "unet"})
    with pytest.raises(BadUsage, match="dtype"):
        load_backbone("tiny", device="cpu", dtype="int3")


def test_uncached_hub_id_raises_missing_weights_at_once(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.chdir(tmp_path)
    start = time.monotonic()
    with pytest.raises(MissingWeights) as err:
        load_backbone("avctl-tests/not-a-cached-model", device="cpu")
    assert time.monotonic() - start < 5
    message = str(err.value)
    assert "avctl-tests/not-a-cached-model" in message and "hf download" in message
    assert str(tmp_path / "hf" / "hub") in message and "\n" not in message

    monkeypatch.setenv("AVCTL_MODEL", "avctl-tests/from-the-environment")
    with pytest.raises(MissingWeights, match="avctl-tests/from-the-environment"):
        load_backbone(device="cpu")
    monkeypatch.delenv("AVCTL_MODEL")
    with pytest.raises(MissingWeights, match="Lightricks/LTX-2"):
        load_backbone(device="cpu")


def test_bad_local_paths_give_bad_input(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "model"
    with pytest.raises(BadInput, match="does not exist") as err:
        load_backbone(str(missing), device="cpu")
    assert str(missing) in str(err.value)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(BadInput, match="transformer/"):
        load_backbone(str(empty), device="cpu")
    a_file = tmp_path / "weights.safetensors"
    a_file.write_bytes(b"not a model")
    with pytest.raises(BadInput, match="is a file"):
        load_backbone(str(a_file), device="cpu")


def test_hub_id_loads_from_the_local_cache_only(
    tiny: Backbone, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A hub id resolves through the HF cache layout (refs/main → snapshots/<commit>), offline."""
    cache = tmp_path / "hf" / "hub"
    repo = cache / "models--avctl-tests--tiny-ltx2"
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    partial = load_backbone("tiny", device="cpu", components={"transformer", "tokenizer"})
    partial.save_pretrained(repo / "snapshots" / commit)

    loaded = load_backbone("avctl-tests/tiny-ltx2", device="cpu", components={"transformer"})
    assert loaded.model_id == "avctl-tests/tiny-ltx2" and loaded.vae is None
    first, second = tiny.transformer.state_dict(), loaded.transformer.state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)
    with pytest.raises(MissingWeights, match="lacks vae") as err:
        load_backbone("avctl-tests/tiny-ltx2", device="cpu")
    assert "hf download avctl-tests/tiny-ltx2" in str(err.value)


def test_bf16_backbone_keeps_latents_in_its_dtype_and_media_in_float() -> None:
    bb = load_backbone("tiny", device="cpu", dtype="bf16")
    assert bb.dtype == torch.bfloat16 and all(m.dtype == torch.bfloat16 for m in bb._modules().values())
    assert bb.encode_text(PROMPTS[:1]).video.dtype == torch.bfloat16
    video = bb.encode_video(_frames(1, 9, 64, 64))
    assert video.dtype == torch.bfloat16 and bb.decode_video(video).dtype == torch.uint8
    mel = bb.waveform_to_mel(_waveform(1, 0.5, bb.audio_sample_rate))
    audio = bb.encode_audio(mel)
    assert mel.dtype == torch.float32 and audio.dtype == torch.bfloat16
    wav = bb.vocode(bb.decode_audio(audio))
    assert wav.dtype == torch.float32 and torch.isfinite(wav).all()
    bb.to("cpu", "fp32")
    assert bb.dtype == torch.float32 and all(m.dtype == torch.float32 for m in bb._modules().values())


def test_bad_media_tensors_give_clear_errors(tiny: Backbone) -> None:
    with pytest.raises(BadUsage, match="2x2"):
        tiny.decode_video(torch.zeros(1, 16, 2, 1, 2))  # 32 px high: too small for the reflect-padded decoder
    with pytest.raises(BadInput, match="too short"):
        tiny.waveform_to_mel(torch.zeros(1, 2, 300))
    with pytest.raises(BadInput, match="2-channel"):
        tiny.waveform_to_mel(torch.zeros(1, 3, 8000))
    with pytest.raises(BadInput, match="log-mel"):
        tiny.encode_audio(torch.zeros(1, 2, 101, 80))
    with pytest.raises(BadInput, match="latents"):
        tiny.decode_audio(torch.zeros(1, 5, 26, 16))
