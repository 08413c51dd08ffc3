"""Quantized frozen base (avctl.quantize): what is quantized, how close it stays, LoRA training on top, the 8-bit
text encoder and the CLI flags."""

import copy

import pytest
import torch

from avctl.errors import BadUsage
from avctl.forward import predict
from avctl.lora import add_lora
from avctl.modalities.base import get_modality
from avctl.quantize import (
    adapters_to_fp32,
    check_lora_training,
    check_quantize_args,
    is_quantized,
    quantize_transformer,
    tensor_bytes,
    text_encoder_targets,
)
from avctl.train import collate, draw_noise, step_loss, train, training_canvas
from tests.test_train import cfg, make_samples
from tests.tiny import backbone, fresh_transformer

CANNY = get_modality("canny")
BLOCK_LINEARS = (".to_q", ".to_k", ".to_v", ".to_out.0", ".net.0.proj", ".net.2")


def _expected_block_linears(tr):
    return {n for n, m in tr.named_modules()
            if isinstance(m, torch.nn.Linear) and n.startswith("transformer_blocks.") and n.endswith(BLOCK_LINEARS)}


def _base_snapshot(tr):
    """Every non-LoRA tensor, quantized ones by their int data and scales."""
    out = {}
    for n, p in tr.named_parameters():
        if ".lora_" in n:
            continue
        n = n.replace(".base_layer", "")
        if is_quantized(p):
            names, _ = p.__tensor_flatten__()
            out.update({f"{n}.{k}": getattr(p, k).detach().clone() for k in names})
        else:
            out[n] = p.detach().clone()
    return out


def test_int8_quantizes_exactly_the_block_linears_and_keeps_the_rest():
    tr = fresh_transformer()
    before = {n: p.detach().clone() for n, p in tr.named_parameters()}
    cls = type(tr)
    report = quantize_transformer(tr, "int8")
    expected = _expected_block_linears(tr)
    assert len(expected) == 56  # 2 blocks × (6 attentions × 4 + 2 feed-forwards × 2)
    quantized = {n for n, m in tr.named_modules() if isinstance(m, torch.nn.Linear) and is_quantized(m.weight)}
    assert quantized == expected and report.modules == len(expected)
    assert type(tr) is cls and all(type(tr.get_submodule(n)) is torch.nn.Linear for n in expected)
    for n, p in tr.named_parameters():  # everything else (skip list, biases, norms, tables) is bit-identical
        if n.removesuffix(".weight") not in expected:
            assert not is_quantized(p) and torch.equal(p, before[n]), n
    for kept in ("proj_in", "audio_proj_in", "proj_out", "audio_proj_out", "time_embed.linear",
                 "audio_time_embed.emb.timestep_embedder.linear_1", "av_cross_attn_video_scale_shift.linear",
                 "caption_projection.linear_1", "audio_caption_projection.linear_2"):
        assert not is_quantized(tr.get_submodule(kept).weight), kept
    dequantized = tr.transformer_blocks[0].attn1.to_q.weight.dequantize()
    original = before["transformer_blocks.0.attn1.to_q.weight"]
    assert (dequantized - original).abs().max() <= original.abs().max() / 127  # per-row int8: ≤ half a step each


def _prediction(tr, batch, noise, sigma):
    canvas, _ = training_canvas(CANNY, tr, batch, sigma, noise)
    with torch.no_grad():
        video, _ = predict(tr, canvas, batch["text_video"], batch["text_audio"], batch["text_mask"])
    return video.float()


# Measured on tiny (relative L2 of the velocity against the fp32 model): bf16 cast 0.0077, int8 0.0066, fp8 0.032.
@pytest.mark.parametrize(("mode", "tolerance"), [("int8", 0.02), ("fp8", 0.08)])
def test_quantized_prediction_stays_close(mode, tolerance):
    batch = collate(make_samples(2), torch.device("cpu"))
    noise = draw_noise(torch.Generator().manual_seed(0), batch)
    sigma = torch.tensor([0.3, 0.8])
    reference = _prediction(fresh_transformer(), batch, noise, sigma)
    tr = fresh_transformer()
    quantize_transformer(tr, mode)
    error = float((_prediction(tr, batch, noise, sigma) - reference).norm() / reference.norm())
    assert 0 < error < tolerance


def test_int8_halves_the_block_weights_against_bf16():
    tr = fresh_transformer().to(torch.bfloat16)
    report = quantize_transformer(tr, "int8")
    # tiny's rows are 16-128 wide, so the per-row scale (fp32) and zero point cost 5 bytes a row on top of int8
    assert 1.6 < report.quantized_bytes_before / report.quantized_bytes_after <= 2
    assert report.bytes_after == report.bytes_before - (report.quantized_bytes_before - report.quantized_bytes_after)
    # one block at LTX-2's real widths (diffusers' default config), on meta: no memory is used
    from diffusers import LTX2VideoTransformer3DModel

    with torch.device("meta"):
        real = LTX2VideoTransformer3DModel(num_layers=1).to(torch.bfloat16)
    report = quantize_transformer(real, "int8")
    assert report.modules == 28
    assert 1.99 < report.quantized_bytes_before / report.quantized_bytes_after <= 2
    to_q = real.transformer_blocks[0].attn1.to_q.weight
    assert tensor_bytes(to_q) == 4096 * 4096 + 4096 * (4 + 1)  # int8 values + fp32 scale + int8 zero point per row


def test_training_on_an_int8_base_moves_only_fp32_lora(tmp_path):
    samples = make_samples()
    tr = fresh_transformer()
    quantize_transformer(tr, "int8")
    base = _base_snapshot(tr)
    init = fresh_transformer()  # the same LoRA init train() makes (PEFT draws A from the seeded global generator)
    quantize_transformer(init, "int8")
    torch.manual_seed(42)
    add_lora(init, CANNY.targets, 4)
    init_lora = {n: p.detach().clone() for n, p in init.named_parameters() if ".lora_" in n}

    result = train(cfg(tmp_path, steps=3, save_every=3, gradient_checkpointing=True), CANNY, samples, tr, {})
    assert result.steps == 3 and result.lora_path.is_file()
    check_lora_training(tr)
    lora = {n: p for n, p in tr.named_parameters() if ".lora_" in n}
    assert lora.keys() == init_lora.keys() and all(p.dtype == torch.float32 for p in lora.values())
    a = torch.cat([(lora[n] != init_lora[n]).flatten() for n in lora if "lora_A" in n])
    b = torch.cat([lora[n].flatten() for n in lora if "lora_B" in n])
    assert a.float().mean() > 0.99 and (b != 0).float().mean() > 0.99
    after = _base_snapshot(tr)
    assert after.keys() == base.keys() and all(torch.equal(after[k], base[k]) for k in base)
    assert is_quantized(tr.transformer_blocks[0].attn1.to_q.base_layer.weight)


def test_fp32_adapters_over_a_bf16_int8_base_take_small_steps():
    """The issue's measure: at lr 1e-5 bf16 LoRA weights keep most of their values; fp32 ones change them all."""
    tr = fresh_transformer().to(torch.bfloat16)
    quantize_transformer(tr, "int8")
    torch.manual_seed(0)
    add_lora(tr, CANNY.targets, 4)
    check_lora_training(tr)  # add_lora makes the adapters fp32 over any base
    params = adapters_to_fp32(tr)  # and a second cast is a no-op
    check_lora_training(tr)
    assert {p.dtype for p in params} == {torch.float32}
    assert tr.transformer_blocks[0].attn1.to_q.base_layer.weight.dtype == torch.bfloat16  # the base stays
    a_before = {id(p): p.detach().clone() for p in params}
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    batch = collate(make_samples(2), torch.device("cpu"))
    g = torch.Generator().manual_seed(1)
    for _ in range(2):  # step 1 moves only B (it starts at zero), step 2 moves A
        optimizer.zero_grad()
        loss, _ = step_loss(CANNY, tr, batch, torch.tensor([0.4, 0.7]), draw_noise(g, batch))
        loss.backward()
        assert all(p.grad is None for n, p in tr.named_parameters() if ".lora_" not in n)
        assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in params)
        optimizer.step()
    names = {id(p): n for n, p in tr.named_parameters()}
    changed = torch.cat([(p != a_before[id(p)]).flatten() for p in params if "lora_A" in names[id(p)]])
    assert changed.float().mean() >= 0.99


def _saved_for_backward(tr, batch, noise):
    """One training step: bytes autograd keeps for backward beyond the model's own tensors, and the LoRA grads."""
    own = {p.data_ptr() for p in tr.parameters() if not is_quantized(p)}
    seen: set[int] = set()

    def pack(t):
        if not is_quantized(t) and t.data_ptr() not in own and t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            pack.bytes += t.numel() * t.element_size()
        return t

    pack.bytes = 0
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss, _ = step_loss(CANNY, tr, batch, torch.tensor([0.4, 0.7]), noise)
    loss.backward()
    return pack.bytes, {n: p.grad.clone() for n, p in tr.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("mode", ["int8", "fp8"])
def test_backward_keeps_no_dequantized_weight_copies(mode):
    """torchao's linear casts the weight up above autograd, which would keep a full-precision copy of every quantized
    weight until backward; the quantized base must keep no more for backward than the unquantized one."""
    batch = collate(make_samples(2), torch.device("cpu"))
    noise = draw_noise(torch.Generator().manual_seed(0), batch)
    models = {}
    for name in ("plain", "quantized", "torchao autograd"):
        tr = fresh_transformer()
        if name != "plain":
            quantize_transformer(tr, mode)
        if name == "torchao autograd":
            for m in tr.modules():
                m.__dict__.pop("forward", None)  # torchao's own linear under autograd, for reference
        torch.manual_seed(0)
        add_lora(tr, CANNY.targets, 4)
        models[name] = _saved_for_backward(tr, batch, noise)
    (plain, _), (quantized, grads), (reference, ref_grads) = models.values()
    assert quantized == plain < reference  # tiny's block weights: ~150 kB of copies without the custom backward
    assert grads.keys() == ref_grads.keys() and len(grads) == 16  # canny: V.SA in 2 blocks, A and B
    for n in grads:
        torch.testing.assert_close(grads[n], ref_grads[n], rtol=1e-4, atol=1e-6)


def test_text_encoder_8bit_gives_close_embeddings():
    bb = copy.copy(backbone())  # a shallow copy: its own text_encoder attribute, shared everything else
    prompts = ["a red ball rolls on the grass", "two cats"]
    reference = bb.encode_text(prompts)
    original = bb.text_encoder
    bb.text_encoder = copy.deepcopy(original)
    from avctl.cache import sample_key
    from avctl.quantize import quantize_backbone

    key = sample_key(bb, "64x64x9", [], "a caption", "weights")
    (report,) = quantize_backbone(bb, None, text_encoder_8bit=True)
    targets = text_encoder_targets(original)
    assert report.modules == len(targets) == 14 and all(".language_model.layers." in n for n in targets)
    for n, p in bb.text_encoder.named_parameters():
        assert is_quantized(p) == (n.removesuffix(".weight") in targets), n  # embeddings, vision tower untouched
    # 8-bit embeddings never reuse a full-precision cache entry
    assert sample_key(bb, "64x64x9", [], "a caption", "weights") != key
    quantized = bb.encode_text(prompts)
    assert torch.equal(quantized.mask, reference.mask)
    for ref, got in ((reference.video, quantized.video), (reference.audio, quantized.audio)):
        error = float((got - ref).norm() / ref.norm())
        assert 0 < error < 0.02  # measured 0.005 on tiny


def test_bad_quantize_arguments_are_refused():
    with pytest.raises(BadUsage, match="int8"):
        check_quantize_args("int4")
    assert check_quantize_args("none") is None and check_quantize_args("int8") == "int8"
    tr = fresh_transformer()
    add_lora(tr, CANNY.targets, 4)
    with pytest.raises(BadUsage, match="before adding LoRA"):
        quantize_transformer(tr, "int8")


def test_cli_train_and_generate_on_a_quantized_base(tmp_path):
    from tests.conftest import write_synthetic_clip
    from tests.test_cli import invoke

    assert "--quantize" in invoke("train", "--help").output and "--text-encoder-8bit" in invoke("generate",
                                                                                                  "--help").output
    write_synthetic_clip(tmp_path / "videos" / "c0.mp4", frames=20, width=160, height=144, fps=24.0, seed=0)
    data, run = tmp_path / "data", tmp_path / "run"
    r = invoke("prepare", "canny", tmp_path / "videos", "--out", data, "--bucket", "128x128x17", "--json")
    assert r.exit_code == 0, r.output
    r = invoke("train", "canny", "--data", data, "--out", run, "--model", "tiny", "--steps", "2", "--rank", "4",
               "--quantize", "int4")
    assert r.exit_code == 2 and "'quantize'" in r.output and "int8" in r.output
    assert len(r.output.strip().splitlines()) == 1 and not run.exists()
    r = invoke("train", "canny", "--data", data, "--out", run, "--model", "tiny", "--steps", "2", "--rank", "4",
               "--quantize", "int8", "--text-encoder-8bit")
    assert r.exit_code == 0, r.output
    assert "quantized int8: 56 Linear layers" in r.output and "quantized int8: 14 Linear layers" in r.output
    assert (run / "lora.safetensors").is_file()
    control = sorted((data / "reference").glob("*.mp4"))[0]
    out = tmp_path / "g.mp4"
    r = invoke("generate", "--prompt", "a red ball", "--lora", run / "lora.safetensors", "--control", control,
               "--model", "tiny", "--width", "128", "--height", "128", "--frames", "17", "--steps", "1",
               "--quantize", "int8", "--out", out)
    assert r.exit_code == 0, r.output
    assert out.is_file() and "quantized int8: 56 Linear layers" in r.output
