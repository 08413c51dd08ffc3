"""`avctl lora convert` / `inspect`: diffusers, PEFT and kohya layouts → the ComfyUI / ltx-trainer form."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from avctl.cli import app
from avctl.errors import BadInput
from avctl.lora import convert_lora, detect_format, inspect_lora, to_comfy_state_dict

MODULE = "transformer_blocks.0.attn1.to_q"
A = torch.arange(8.0).reshape(2, 4)  # rank 2, in 4
B = torch.arange(6.0).reshape(3, 2)  # out 3, rank 2


def _write(path, sd, meta=None):
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path), metadata=meta or {})
    return path


@pytest.mark.parametrize(
    ("layout", "sd", "scale"),
    [
        ("diffusers", {f"transformer.{MODULE}.lora_A.weight": A, f"transformer.{MODULE}.lora_B.weight": B}, 1.0),
        ("peft", {f"base_model.model.{MODULE}.lora_A.default.weight": A,
                  f"base_model.model.{MODULE}.lora_B.default.weight": B}, 1.0),
        # kohya: underscores for dots, lora_down/up, alpha 1 on rank 2 → B scaled by 0.5
        ("kohya", {"lora_unet_transformer_blocks_0_attn1_to_q.lora_down.weight": A,
                   "lora_unet_transformer_blocks_0_attn1_to_q.lora_up.weight": B,
                   "lora_unet_transformer_blocks_0_attn1_to_q.alpha": torch.tensor(1.0)}, 0.5),
    ],
)
def test_layouts_convert_to_comfy_keys_with_alpha_folded(layout, sd, scale):
    assert detect_format(list(sd)) == layout
    out, fmt = to_comfy_state_dict(sd)
    assert fmt == layout
    assert set(out) == {f"{MODULE}.lora_A.weight", f"{MODULE}.lora_B.weight"}
    assert torch.equal(out[f"{MODULE}.lora_A.weight"], A)
    assert torch.allclose(out[f"{MODULE}.lora_B.weight"], B * scale)


def test_convert_writes_a_file_that_inspects_as_comfyui(tmp_path):
    src = _write(tmp_path / "in.safetensors",
                 {f"transformer.{MODULE}.lora_A.weight": A, f"transformer.{MODULE}.lora_B.weight": B},
                 {"ss_reference_downscale_factor": "2", "note": "kept"})
    result = convert_lora(src, tmp_path / "out.safetensors")
    assert result["source_format"] == "diffusers" and result["reference_downscale_factor"] == 2
    info = inspect_lora(tmp_path / "out.safetensors")
    assert info["format"] == "comfyui" and info["groups"] == {"V.SA": 1} and info["ranks"] == [2]
    assert info["dtypes"] == ["bfloat16"] and info["metadata"]["note"] == "kept"
    assert info["reference_downscale_factor"] == "2"
    assert set(load_file(str(tmp_path / "out.safetensors"))) == {
        f"diffusion_model.{MODULE}.lora_A.weight", f"diffusion_model.{MODULE}.lora_B.weight"}


def test_cli_convert_refuses_overwrite_and_unknown_files(tmp_path):
    runner = CliRunner()
    src = _write(tmp_path / "in.safetensors",
                 {f"transformer.{MODULE}.lora_A.weight": A, f"transformer.{MODULE}.lora_B.weight": B})
    dst = tmp_path / "out.safetensors"
    r = runner.invoke(app, ["lora", "convert", str(src), str(dst), "--downscale", "4", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["reference_downscale_factor"] == 4
    r = runner.invoke(app, ["lora", "convert", str(src), str(dst)])
    assert r.exit_code == 1 and "--overwrite" in r.output
    junk = _write(tmp_path / "junk.safetensors", {"vae.encoder.weight": torch.zeros(2)})
    r = runner.invoke(app, ["lora", "convert", str(junk), str(tmp_path / "j.safetensors")])
    assert r.exit_code == 1 and "no LTX-2 LoRA keys" in r.output
    with pytest.raises(BadInput):
        to_comfy_state_dict({"lora_unet_nonexistent_module.lora_down.weight": A})
