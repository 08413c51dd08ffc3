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


MEASURE = """
import json, resource, sys
import torch, diffusers, transformers, peft  # noqa: F401
import avctl.cli, avctl.train, avctl.cache, avctl.plan  # noqa: F401
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()
after_imports = rss()
avctl.cli.app(sys.argv[1:], standalone_mode=False)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
sys.stderr.write("MEASURED " + json.dumps({"after_imports": after_imports, "peak": peak}) + "\\n")
"""


def test_plan_for_shape_1_on_cpu_is_within_25_percent_of_the_measured_training_peak(tmp_path):
    """A fresh process trains canny on shape:1 (real widths, bf16) from a filled cache; its peak RSS above the RSS
    after imports is what the plan's training step should predict (no encoder loads: the cache is complete)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from tests.conftest import write_synthetic_clip
    from tests.shapes import fill_synthetic_cache

    for i in range(2):
        write_synthetic_clip(tmp_path / "videos" / f"c{i}.mp4", frames=9, width=64, height=64, seed=i)
    data = tmp_path / "ds"
    r = runner.invoke(app, ["prepare", "canny", str(tmp_path / "videos"), "--out", str(data), "--bucket", "64x64x9"])
    assert r.exit_code == 0, r.output
    fill_synthetic_cache(data, "shape:1", text_tokens=1024)  # the plan counts the pipeline's 1,024 tokens

    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "2", "AVCTL_NO_PROGRESS": "1"}
    args = ["train", "canny", "--data", str(data), "--out", str(tmp_path / "run"), "--model", "shape:1", "--dtype",
            "bf16", "--steps", "2", "--json"]
    done = subprocess.run([sys.executable, "-c", MEASURE, *args], capture_output=True, text=True, env=env, cwd=root)
    assert done.returncode == 0, done.stderr[-3000:]
    measured = json.loads(done.stderr.split("MEASURED ", 1)[1])
    used_gib = (measured["peak"] - measured["after_imports"]) / 2**30
    plan = make_plan(PlanRequest(modality="canny", model="shape:1", bucket=(64, 64, 9), device="cpu", dtype="bf16"))
    print(f"plan {plan.peak_gib:.3f} GiB, measured {used_gib:.3f} GiB")  # shown with -s
    assert plan.parts["transformer weights"] > 1.3  # the real-width block dominates; nothing else is resident
    assert abs(plan.peak_gib - used_gib) <= 0.25 * used_gib, (plan.peak_gib, used_gib, plan.parts)
