"""LoRA: target groups, training touches only LoRA weights, files in the ComfyUI format that diffusers loads."""

import json

import pytest
import torch
from safetensors import safe_open

from avctl.canvas import Canvas, Reference, build_stream
from avctl.errors import BadInput
from avctl.forward import predict
from avctl.lora import GROUP_MODULES, add_lora, load_lora, lora_state_dict, read_lora, save_lora, target_modules
from tests.tiny import fresh_transformer, text


def _canvas(tr, seed=0):
    g = torch.Generator().manual_seed(seed)
    c, ac = tr.config.in_channels, tr.config.audio_in_channels // 16
    sigma = torch.tensor([0.5])
    return Canvas(
        build_stream("video", tr, torch.randn(1, c, 2, 4, 4, generator=g), sigma,
                     [Reference(torch.randn(1, c, 2, 2, 2, generator=g), 2)]),
        build_stream("audio", tr, torch.randn(1, ac, 8, 16, generator=g), sigma),
    )


def test_groups_match_exactly_their_modules():
    tr = fresh_transformer()
    n_blocks = len(tr.transformer_blocks)
    for group, (prefix, linears) in GROUP_MODULES.items():
        t = fresh_transformer()
        add_lora(t, (group,), rank=2)
        wrapped = {n.split(".lora_A.")[0] for n, _ in t.named_parameters() if ".lora_A." in n}
        expected = {f"transformer_blocks.{i}.{prefix}.{lin}" for i in range(n_blocks) for lin in linears}
        assert wrapped == expected, group
    assert "attn1.to_q" in target_modules(("V.SA",)) and "audio_attn1.to_q" not in target_modules(("V.SA",))


def test_training_step_changes_only_lora_weights():
    tr = fresh_transformer()
    params = add_lora(tr, ("V.SA",), rank=4)
    with torch.no_grad():  # B starts at 0; give it a value so A gets gradients too
        for n, p in tr.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.01)
    before = {n: p.detach().clone() for n, p in tr.named_parameters()}
    opt = torch.optim.AdamW(params, lr=1e-2)
    canvas = _canvas(tr)
    v, a = predict(tr, canvas, *text())
    (canvas.video.target(v).pow(2).mean() + canvas.audio.target(a).pow(2).mean()).backward()
    opt.step()
    changed = {n for n, p in tr.named_parameters() if not torch.equal(p, before[n])}
    assert changed, "nothing trained"
    assert all("lora_" in n for n in changed), sorted(changed - {n for n in changed if "lora_" in n})[:3]
    assert all(".attn1." in n and "audio_attn1" not in n for n in changed)
    assert all(not p.requires_grad for n, p in tr.named_parameters() if "lora_" not in n)


def _trained_lora(tmp_path):
    tr = fresh_transformer()
    add_lora(tr, ("V.SA", "V.FF"), rank=4)
    with torch.no_grad():
        for n, p in tr.named_parameters():
            if "lora_" in n:
                p.normal_(0, 0.05)
    path = tmp_path / "lora.safetensors"
    save_lora(path, lora_state_dict(tr), downscale=2, avctl_meta={"modality": "canny", "rank": 4})
    return tr, path


def test_file_format_keys_dtype_and_metadata(tmp_path):
    _, path = _trained_lora(tmp_path)
    with safe_open(str(path), "pt") as f:
        keys = list(f.keys())
        meta = f.metadata()
        dtypes = {f.get_tensor(k).dtype for k in keys}
    assert keys and all(k.startswith("diffusion_model.transformer_blocks.") for k in keys)
    assert all(k.endswith((".lora_A.weight", ".lora_B.weight")) for k in keys)
    assert not any(k.endswith(".alpha") for k in keys)
    assert dtypes == {torch.bfloat16}
    assert meta["reference_downscale_factor"] == "2"
    assert json.loads(meta["avctl.modality"]) == "canny"
    assert not list(tmp_path.glob(".*.tmp"))  # atomic write leaves no temp file


def test_saved_lora_loads_in_diffusers_and_reproduces_the_forward(tmp_path):
    from diffusers.loaders.lora_pipeline import LTX2LoraLoaderMixin

    trained, path = _trained_lora(tmp_path)
    # avctl's own forward with the (bf16-rounded) weights it saved
    with torch.no_grad():
        for n, p in trained.named_parameters():
            if "lora_" in n:
                p.copy_(p.to(torch.bfloat16).float())
    canvas = _canvas(trained)
    with torch.no_grad():
        ours, _ = predict(trained, canvas, *text())

    plain = fresh_transformer()
    sd = LTX2LoraLoaderMixin.lora_state_dict(str(path))
    plain.load_lora_adapter(sd, prefix="transformer", adapter_name="x")
    loaded = {n.removesuffix(".lora_A.x.weight") for n, _ in plain.named_parameters() if ".lora_A." in n}
    saved = {k.removeprefix("diffusion_model.").removesuffix(".lora_A.weight") for k in sd_keys(path) if "lora_A" in k}
    assert loaded == saved
    with torch.no_grad():
        theirs, _ = predict(plain, _canvas(plain), *text())
    assert torch.allclose(ours, theirs, atol=1e-4, rtol=1e-3)
    base_out, _ = predict(fresh_transformer(), _canvas(plain), *text())
    assert not torch.allclose(base_out, theirs, atol=1e-4)  # the LoRA does something


def sd_keys(path):
    with safe_open(str(path), "pt") as f:
        return list(f.keys())


def test_read_and_attach_via_avctl(tmp_path):
    _, path = _trained_lora(tmp_path)
    lf = read_lora(path)
    assert lf.downscale == 2 and lf.rank == 4 and lf.avctl["modality"] == "canny"
    tr = fresh_transformer()
    load_lora(tr, lf, "a")
    assert any(".lora_A.a." in n for n, _ in tr.named_parameters())


def test_bad_lora_files_give_clear_errors(tmp_path):
    with pytest.raises(BadInput, match="not found"):
        read_lora(tmp_path / "missing.safetensors")
    pt = tmp_path / "x.pt"
    pt.write_bytes(b"\x80\x04")
    with pytest.raises(BadInput, match="pickle"):
        read_lora(pt)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(BadInput, match="readable"):
        read_lora(junk)
    foreign = tmp_path / "foreign.safetensors"
    save_lora(foreign, {"down_blocks.0.conv.lora_A.weight": torch.zeros(2, 4),
                        "down_blocks.0.conv.lora_B.weight": torch.zeros(4, 2)}, 1, {})
    with pytest.raises(BadInput, match="none of its"):
        load_lora(fresh_transformer(), read_lora(foreign), "f")
