"""Real-shape presets: LTX-2's own configs through the real classes, on `meta` (instant) and cut to few blocks."""

import pytest
import torch

from avctl import presets
from avctl.backbone import load_backbone
from avctl.errors import BadUsage


def test_full_shape_counts_match_ltx2_on_meta():
    counts = presets.parameter_counts()
    # ltx2.md §11/§14: 18.876B transformer, 1.222B video VAE, 1.431B connectors, Gemma 3 12B + SigLIP 12.19B.
    assert round(counts["transformer"] / 1e9, 3) == 18.876
    assert round(counts["vae"] / 1e9, 3) == 1.222
    assert round(counts["connectors"] / 1e9, 3) == 1.431
    assert round(counts["text_encoder"] / 1e9, 2) == 12.19
    assert 0.10e9 < counts["audio_vae"] + counts["vocoder"] < 0.12e9


def test_cut_preset_keeps_widths_heads_and_names():
    full, one = presets.shape_configs(), presets.shape_configs(2)
    assert one["transformer"]["num_layers"] == 2 and full["transformer"]["num_layers"] == 48
    for key in ("num_attention_heads", "attention_head_dim", "audio_num_attention_heads", "rope_type",
                "caption_channels"):
        assert one["transformer"][key] == full["transformer"][key]
    assert one["text_encoder"]["text_config"]["num_hidden_layers"] == 2
    assert one["connectors"]["text_proj_in_factor"] == 3  # follows the text encoder's depth
    meta = presets.build_module("transformer", one["transformer"])
    names = {n for n, _ in meta.named_parameters()}
    assert "transformer_blocks.1.attn1.to_q.weight" in names and "transformer_blocks.2.attn1.to_q.weight" not in names
    assert meta.transformer_blocks[0].attn1.to_q.weight.shape == (4096, 4096)
    assert meta.transformer_blocks[0].audio_attn1.to_q.weight.shape == (2048, 2048)


@pytest.mark.parametrize("name", ["shape:0", "shape:49", "shape:x", "shape:"])
def test_bad_shape_names_are_refused(name):
    with pytest.raises(BadUsage, match="shape:L"):
        load_backbone(name, device="cpu", components={"vae"})


def test_shape_1_transformer_is_bf16_seeded_and_runs():
    a = load_backbone("shape:1", device="cpu", components={"transformer"})
    tr = a.transformer
    assert a.dtype == torch.bfloat16 and all(p.dtype == torch.bfloat16 for p in tr.parameters())
    assert not any(p.device.type == "meta" for p in tr.parameters())
    weight = tr.transformer_blocks[0].attn1.to_q.weight
    bound = 1 / 4096**0.5
    assert weight.abs().max() <= bound and weight.float().std() > bound / 3  # uniform in ±1/sqrt(fan_in)
    # Seeded per tensor name: the same values whatever else is built alongside.
    again = presets.build_module("transformer", presets.shape_configs(1)["transformer"])
    presets.materialize(again, torch.device("cpu"), torch.bfloat16, presets.SHAPE_SEED, "transformer")
    assert torch.equal(again.transformer_blocks[0].attn1.to_q.weight, weight)
    del again
    from avctl.canvas import Canvas, build_stream
    from avctl.forward import predict

    g = torch.Generator().manual_seed(0)
    video = torch.randn(1, 128, 1, 2, 2, generator=g)
    audio = torch.randn(1, 8, 3, 16, generator=g)
    sigma = torch.tensor([0.5])
    canvas = Canvas(build_stream("video", tr, video, sigma, []), build_stream("audio", tr, audio, sigma, []))
    text = torch.randn(1, 8, 3840, generator=g)
    with torch.no_grad():
        v, au = predict(tr, canvas, text, text, torch.ones(1, 8))
    assert v.shape == (1, 4, 128) and au.shape == (1, 3, 128)
    assert torch.isfinite(v.float()).all() and torch.isfinite(au.float()).all()


def test_shape_text_encoder_is_tied_and_pads_to_the_pipeline_length():
    b = load_backbone("shape:1", device="cpu", components={"text_encoder", "tokenizer"})
    te = b.text_encoder
    assert te.get_output_embeddings().weight is te.get_input_embeddings().weight
    assert b.tokenizer.model_max_length == presets.TEXT_MAX_LENGTH
