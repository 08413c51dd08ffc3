"""LTX-2.3-style configs (gated attention, prompt modulation by σ, perturbed attention, per-modality connectors) run
through predict, training and sampling; σ reaches the model; strength honours gates and STG perturbation."""

import copy

import pytest
import torch

from avctl.cache import Sample
from avctl.canvas import Canvas, Reference, build_stream
from avctl.forward import predict
from avctl.lora import add_lora, lora_state_dict, read_lora, save_lora
from avctl.modalities.base import get_modality
from avctl.sample import LoraUse, generate
from avctl.strength import StrengthAttnProcessor, set_strength
from avctl.train import TrainConfig, train
from tests.tiny import fresh_ltx23_transformer, ltx23_backbone, ltx23_text


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(0)
    tr = ltx23_backbone().transformer
    c, ac = tr.config.in_channels, tr.config.audio_in_channels // 16
    return {
        "video": torch.randn(1, c, 3, 4, 4, generator=g),
        "video_ref": torch.randn(1, c, 3, 2, 2, generator=g),
        "audio": torch.randn(1, ac, 12, 16, generator=g),
        "sigma": torch.tensor([0.6]),
        "text": ltx23_text(),
    }


def canvas(tr, d, strength=None, sigma=None):
    sigma = d["sigma"] if sigma is None else sigma
    refs = [] if strength is None else [Reference(d["video_ref"], 2, strength)]
    return Canvas(build_stream("video", tr, d["video"], sigma, refs), build_stream("audio", tr, d["audio"], sigma))


def test_config_is_ltx23_style():
    tr, con = ltx23_backbone().transformer, ltx23_backbone().connectors
    assert tr.prompt_modulation and not tr.config.use_prompt_embeddings and tr.config.perturbed_attn
    assert tr.transformer_blocks[0].attn1.to_gate_logits is not None
    assert con.config.per_modality_projections


def test_canvas_carries_the_sample_sigma():
    tr = ltx23_backbone().transformer
    x = torch.zeros(2, tr.config.in_channels, 1, 2, 2)
    ref = torch.zeros(2, tr.config.in_channels, 1, 1, 1)
    sigma = torch.tensor([0.25, 0.75])
    sc = build_stream("video", tr, x, sigma, [Reference(ref, 2)])
    assert torch.allclose(sc.sigma, torch.tensor([250.0, 750.0]))
    assert (sc.timestep[:, sc.target_len:] == 0).all()  # reference tokens at 0, the prompt modulation at σ
    assert torch.equal(build_stream("video", tr, x, sigma, noisy=False).sigma, torch.zeros(2))


def test_predict_runs_and_sigma_reaches_the_model(data):
    tr = ltx23_backbone().transformer
    with torch.no_grad():
        c = canvas(tr, data, strength=1.0)
        v, a = predict(tr, c, *data["text"])
        assert v.shape == c.video.tokens.shape and a.shape == c.audio.tokens.shape
        assert torch.isfinite(v).all() and torch.isfinite(a).all()
        # Same per-token timesteps, another σ for the prompt modulation: the output changes.
        c2 = canvas(tr, data, strength=1.0)
        c2.video.sigma = c2.video.sigma * 0.5
        c2.audio.sigma = c2.audio.sigma * 0.5
        assert torch.equal(c2.video.timestep, c.video.timestep)
        v2, a2 = predict(tr, c2, *data["text"])
    assert (v2 - v).abs().max() > 1e-4 and (a2 - a).abs().max() > 1e-4


def test_strength_with_gated_attention(data):
    """Strength 0 removes the reference exactly and 0.5 differs from 1, with per-head gates on every attention."""
    tr = fresh_ltx23_transformer()
    with torch.no_grad():
        v_none, a_none = predict(tr, canvas(tr, data), *data["text"])
        outs = {}
        for w in (0.0, 0.5, 1.0):
            c = canvas(tr, data, strength=w)
            v, a = predict(tr, c, *data["text"])
            outs[w] = (c.video.target(v), c.audio.target(a))
    assert isinstance(tr.transformer_blocks[0].attn1.processor, StrengthAttnProcessor)
    assert torch.allclose(outs[0.0][0], v_none, atol=1e-5) and torch.allclose(outs[0.0][1], a_none, atol=1e-5)
    assert (outs[0.5][0] - outs[1.0][0]).abs().max() > 1e-4
    assert (outs[1.0][0] - v_none).abs().max() > 1e-4


def _forward(tr, c, text, batch=1, **kw):
    """The transformer on a canvas repeated `batch` times, with STG arguments (predict passes none)."""
    v, a = c.video, c.audio
    rep = lambda t: t.repeat(batch, *([1] * (t.ndim - 1)))  # noqa: E731
    tv, ta, tm = (rep(t) for t in text)
    with torch.no_grad():
        return tr(hidden_states=rep(v.tokens), audio_hidden_states=rep(a.tokens), encoder_hidden_states=tv,
                  audio_encoder_hidden_states=ta, timestep=rep(v.timestep), audio_timestep=rep(a.timestep),
                  sigma=rep(v.sigma), audio_sigma=rep(a.sigma), encoder_attention_mask=tm,
                  audio_encoder_attention_mask=tm, video_coords=rep(v.coords), audio_coords=rep(a.coords),
                  return_dict=False, **kw)


def test_stg_perturbation_survives_the_strength_processor(data):
    """Fast path: the same as diffusers' LTX2PerturbedAttnProcessor. Strength path: a batch whose second sample is
    perturbed gives each sample what it gives alone."""
    stock = fresh_ltx23_transformer()
    ours = copy.deepcopy(stock)
    c = canvas(stock, data, strength=1.0)  # strength 1, one group: the fast path
    set_strength(ours, c)
    for stg in (None, [0]):
        a = _forward(stock, c, data["text"], spatio_temporal_guidance_blocks=stg)
        b = _forward(ours, c, data["text"], spatio_temporal_guidance_blocks=stg)
        assert all(torch.allclose(x, y, atol=1e-5) for x, y in zip(a, b, strict=True))
    perturbed_stock = _forward(stock, c, data["text"], spatio_temporal_guidance_blocks=[0])
    assert (perturbed_stock[0] - _forward(stock, c, data["text"])[0]).abs().max() > 1e-4  # STG acts

    c = canvas(ours, data, strength=0.5)  # a real strength plan
    set_strength(ours, c)
    plain = _forward(ours, c, data["text"])
    perturbed = _forward(ours, c, data["text"], spatio_temporal_guidance_blocks=[0])
    mixed = _forward(ours, c, data["text"], batch=2, spatio_temporal_guidance_blocks=[0],
                     perturbation_mask=torch.tensor([1.0, 0.0]))
    assert (perturbed[0] - plain[0]).abs().max() > 1e-4
    for i in range(2):  # video and audio
        assert torch.allclose(mixed[i][:1], plain[i], atol=1e-5)
        assert torch.allclose(mixed[i][1:], perturbed[i], atol=1e-5)


def test_training_two_steps(tmp_path):
    g = torch.Generator().manual_seed(0)
    tr = fresh_ltx23_transformer()
    c, ac = tr.config.in_channels, tr.config.audio_in_channels // 16
    tv, ta, tm = ltx23_text()
    samples = [Sample(video=torch.randn(c, 2, 4, 4, generator=g), audio=torch.randn(ac, 8, 16, generator=g),
                      reference=torch.randn(c, 2, 2, 2, generator=g), text_video=tv[0], text_audio=ta[0],
                      text_mask=tm[0], fps=24.0) for _ in range(2)]
    config = TrainConfig(modality="canny", out=tmp_path / "run", steps=2, rank=4, save_every=2, lr=1e-3)
    losses = []
    result = train(config, get_modality("canny"), samples, tr, {}, progress=lambda s, t, row: losses.append(row))
    assert result.steps == 2 and result.lora_path.exists()
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(r["loss"])) for r in losses)


def test_generate_two_steps_with_a_reference(tmp_path):
    backbone = ltx23_backbone()
    tr = fresh_ltx23_transformer()
    add_lora(tr, ("V.SA",), rank=4)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for n, p in tr.named_parameters():
            if "lora_" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    path = tmp_path / "canny.safetensors"
    save_lora(path, lora_state_dict(tr), downscale=2, avctl_meta={"modality": "canny", "streams": ["video"]})
    control = (torch.rand(9, 64, 64, 3, generator=g) * 255).to(torch.uint8).numpy()
    use = LoraUse(read_lora(path), 1.0, control)
    size = {"width": 64, "height": 64, "frames": 9, "fps": 24.0, "steps": 2}
    full = generate(backbone, "a red ball", [use], strength=1.0, **size)
    half = generate(backbone, "a red ball", [use], strength=0.5, **size)
    assert full.frames.shape == (9, 64, 64, 3) and full.steps == 2
    assert torch.isfinite(full.final_latents["video"]).all() and torch.isfinite(full.final_latents["audio"]).all()
    assert not torch.allclose(full.final_latents["video"], half.final_latents["video"], atol=1e-5)


def test_bench_flop_count_runs_on_an_ltx23_config(data):
    """bench's meta copy rebuilds the 2.3 options from the config; the attention gates add FLOPs over the same
    transformer without them."""
    from avctl.bench import forward_flops, meta_copy

    new = ltx23_backbone().transformer
    base = {k: v for k, v in new.config.items() if not k.startswith("_")}
    off = {"gated_attn": False, "audio_gated_attn": False}
    old = type(new)(**{**base, **off}).eval()
    f_new = forward_flops(meta_copy(new), canvas(new, data, strength=1.0), data["text"])
    f_old = forward_flops(meta_copy(old), canvas(old, data, strength=1.0), data["text"])
    assert meta_copy(new).transformer_blocks[0].attn1.to_gate_logits is not None
    assert f_new["linear"] > f_old["linear"] > 0
