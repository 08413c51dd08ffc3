"""avctl plan: per-GPU memory from configs on meta and measured per-token costs; fits / advice that fits."""

import json
import shlex

import pytest
from typer.testing import CliRunner

from avctl.cli import app
from avctl.plan import ACTIVATION_COSTS, PlanRequest, make_plan, measure_saved_bytes

runner = CliRunner()
ENCODERS = ("text encoder", "vae", "connectors", "audio vae", "vocoder")


def plan_json(*args: str) -> dict:
    result = runner.invoke(app, ["plan", *args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_canny_on_the_full_model_fits_80_gib_with_no_encoder_resident_while_training():
    data = plan_json("canny", "--model", "shape", "--bucket", "768x512x121", "--gpu-memory", "80")
    assert data["fits"] is True
    assert data["tokens"] == {"video_target": 6144, "video_reference": 1536, "video": 7680, "audio": 127}
    assert not any(enc in part for part in data["parts"] for enc in ENCODERS)
    assert any("text encoder" in part for part in data["precompute"])
    assert data["parts"]["transformer weights"] == pytest.approx(18.876e9 * 2 / 2**30, rel=1e-3)
    assert data["lora_parameters"] == 50_331_648  # canny at Table 5's rank 32 on V.SA (ltx2.md §14: 50.3M)
    assert data["peak_gib"] == pytest.approx(sum(data["parts"].values()), abs=0.01)


def test_depth_at_rank_128_does_not_fit_24_gib_and_the_first_advice_makes_it_fit():
    args = ["depth", "--model", "shape", "--rank", "128", "--gpu-memory", "24"]
    data = plan_json(*args)
    assert data["fits"] is False and data["advice"]
    fixed = plan_json(*args, *shlex.split(data["advice"][0]))  # later flags override earlier ones
    assert fixed["fits"] is True


def test_checkpointing_quantization_and_sharding_each_lower_the_peak():
    base = make_plan(PlanRequest(modality="depth", model="shape", gradient_checkpointing=False))
    ckpt = make_plan(PlanRequest(modality="depth", model="shape", gradient_checkpointing=True))
    int8 = make_plan(PlanRequest(modality="depth", model="shape", quantize="int8"))
    fsdp = make_plan(PlanRequest(modality="depth", model="shape", world_size=4, strategy="fsdp"))
    assert ckpt.peak_gib < base.peak_gib / 3
    assert int8.parts["transformer weights"] < 0.6 * ckpt.parts["transformer weights"]
    assert fsdp.parts["transformer weights"] == pytest.approx(ckpt.parts["transformer weights"] / 4, rel=1e-3)
    assert make_plan(PlanRequest(modality="depth", model="shape", rank=64)).lora_parameters * 2 == \
        ckpt.lora_parameters


def test_bad_bucket_and_choices_are_one_line_errors():
    result = runner.invoke(app, ["plan", "canny", "--model", "shape", "--bucket", "768x500x121"])
    assert result.exit_code == 2 and "multiples of" in result.output
    result = runner.invoke(app, ["plan", "canny", "--model", "shape", "--quantize", "int4"])
    assert result.exit_code == 2 and "int8" in result.output


def test_activation_costs_are_what_the_real_width_block_keeps():
    """The shipped per-token constants reproduce a fresh measurement on shape:1 (one block at real width)."""
    from avctl.backbone import load_backbone

    tr = load_backbone("shape:1", device="cpu", components={"transformer"}).transformer
    tr.requires_grad_(False)
    grid, audio, text = (2, 4, 8), 12, 1024
    measured = measure_saved_bytes(tr, grid, audio, text, checkpointing=False)
    video = grid[0] * grid[1] * grid[2]
    c = ACTIVATION_COSTS
    predicted = (c["outer_video"] + c["block_video"]) * video + (c["outer_audio"] + c["block_audio"]) * audio \
        + c["outer_constant"] + c["block_constant"]
    assert measured == pytest.approx(predicted, rel=0.02)
    ckpt = measure_saved_bytes(tr, grid, audio, text, checkpointing=True)
    hidden = 2 * (4096 * video + 2048 * audio)
    assert ckpt == pytest.approx(c["outer_video"] * video + c["outer_audio"] * audio + c["outer_constant"] + hidden,
                                 rel=0.02)
