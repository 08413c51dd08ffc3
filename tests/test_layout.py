"""The canvas layout end to end: `train --layout side-by-side` writes avctl.layout, and `generate` samples each LoRA
on the layout its metadata names (the reference to the right of the target), recorded in the sidecar."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

import avctl.sample
from avctl.cli import app
from avctl.errors import BadUsage
from avctl.lora import read_lora
from avctl.modalities.base import get_modality
from avctl.sample import LoraUse, generate
from avctl.train import TrainConfig, with_layout
from tests.conftest import synthetic_frames, write_synthetic_clip
from tests.tiny import backbone

runner = CliRunner()


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args], env={"AVCTL_NO_PROGRESS": "1"})


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """prepare detail (downscale 1) → train it side by side for one step on tiny."""
    root = tmp_path_factory.mktemp("layout")
    for i in range(2):
        write_synthetic_clip(root / "videos" / f"c{i}.mp4", frames=12, width=80, height=72, fps=24.0, seed=i)
    data, out = root / "data", root / "run"
    r = invoke("prepare", "detail", root / "videos", "--out", data, "--bucket", "64x64x9", "--json")
    assert r.exit_code == 0, r.output
    r = invoke("train", "detail", "--data", data, "--out", out, "--model", "tiny", "--steps", "1", "--rank", "4",
               "--layout", "side-by-side", "--json")
    assert r.exit_code == 0, r.output
    return root, data, out


@pytest.fixture
def spy(monkeypatch):
    """Every video stream the sampler builds: its layout argument and the x positions of target and reference."""
    calls: list[dict] = []
    real = avctl.sample.build_stream

    def recording(stream, transformer, target, sigma, references=(), **kw):
        canvas = real(stream, transformer, target, sigma, references, **kw)
        if stream == "video" and references:
            x_start = canvas.coords[0, 2, :, 0]
            n = canvas.segments[0].end
            calls.append({"layout": kw.get("layout", "parallel"),
                          "target_x_end": float(canvas.coords[0, 2, :n, 1].max()),
                          "ref_x_min": float(x_start[n:].min())})
        return canvas

    monkeypatch.setattr(avctl.sample, "build_stream", recording)
    return calls


def test_side_by_side_lora_records_its_layout(run):
    _, _, out = run
    lora = read_lora(out / "lora.safetensors")
    assert lora.avctl["layout"] == "side-by-side" and lora.downscale == 1


def test_generate_samples_a_side_by_side_lora_side_by_side(run, spy):
    root, _, out = run
    control = root / "control.mp4"
    write_synthetic_clip(control, frames=9, width=64, height=64, fps=24.0, seed=5)
    video = root / "gen.mp4"
    r = invoke("generate", "--prompt", "a scene", "--lora", out / "lora.safetensors", "--control", control,
               "--model", "tiny", "--width", 64, "--height", 64, "--frames", 9, "--steps", 2, "--out", video)
    assert r.exit_code == 0, r.output
    assert spy and all(c["layout"] == "side-by-side" for c in spy)
    # The reference tokens sit to the right of the target: x offset by the target's width.
    assert all(c["ref_x_min"] >= c["target_x_end"] == 64 for c in spy)
    sidecar = json.loads(video.with_suffix(".json").read_text())
    assert sidecar["layout"] == "side-by-side" and sidecar["loras"][0]["layout"] == "side-by-side"
    assert sidecar["sampler"]["layout"] == "side-by-side"


def test_a_lora_without_layout_is_sampled_parallel_and_layouts_change_the_output(run, spy):
    _, _, out = run
    trained = read_lora(out / "lora.safetensors")
    plain = read_lora(out / "lora.safetensors")
    del plain.avctl["layout"]  # a LoRA from before the key, or from another trainer
    control = synthetic_frames(9, 64, 64, seed=3)
    size = {"width": 64, "height": 64, "frames": 9, "steps": 2, "schedule": "shifted"}
    side = generate(backbone(), "a scene", [LoraUse(trained, 1.0, control)], **size)
    n_side = len(spy)
    par = generate(backbone(), "a scene", [LoraUse(plain, 1.0, control)], **size)
    assert {c["layout"] for c in spy[:n_side]} == {"side-by-side"}
    assert {c["layout"] for c in spy[n_side:]} == {"parallel"}
    assert all(c["ref_x_min"] == 0 for c in spy[n_side:])
    assert side.settings["layout"] == "side-by-side" and par.settings["layout"] == "parallel"
    assert not torch.equal(side.final_latents["video"], par.final_latents["video"])


def test_loras_of_different_layouts_are_refused_together(run):
    _, _, out = run
    side, plain = read_lora(out / "lora.safetensors"), read_lora(out / "lora.safetensors")
    plain.avctl["layout"] = "parallel"
    control = synthetic_frames(9, 64, 64, seed=3)
    with pytest.raises(BadUsage, match="different canvas layouts"):
        generate(backbone(), "x", [LoraUse(side, 1.0, control), LoraUse(plain, 1.0, control)],
                 width=64, height=64, frames=9, steps=1)


def test_layout_is_part_of_the_resume_fingerprint(run, tmp_path):
    _, data, out = run
    base = {"modality": "detail", "rank": 4}
    assert TrainConfig(**base).fingerprint() == TrainConfig(**base, layout="parallel").fingerprint()
    assert TrainConfig(**base).fingerprint() != TrainConfig(**base, layout="side-by-side").fingerprint()
    r = invoke("train", "detail", "--data", data, "--out", out, "--model", "tiny", "--steps", "2", "--rank", "4",
               "--layout", "parallel")
    assert r.exit_code != 0 and "config" in r.output.lower()


def test_side_by_side_on_a_downscaled_modality_is_refused_in_one_line(tmp_path):
    with pytest.raises(BadUsage, match="downscale 2"):
        with_layout(get_modality("canny"), "side-by-side")
    out = tmp_path / "run"
    r = invoke("train", "canny", "--data", tmp_path / "nodata", "--out", out, "--model", "tiny",
               "--layout", "side-by-side")
    assert r.exit_code == 2, r.output
    assert "--layout side-by-side" in r.output and len(r.output.strip().splitlines()) == 1
    assert not out.exists()  # refused before the dataset, the model or the run folder


def test_bench_layout_option_builds_side_by_side_canvases(monkeypatch):
    import avctl.bench

    layouts: list[str] = []
    real = avctl.bench.build_stream

    def recording(stream, *args, **kw):
        if stream == "video":
            layouts.append(kw.get("layout", "parallel"))
        return real(stream, *args, **kw)

    monkeypatch.setattr(avctl.bench, "build_stream", recording)
    args = ["bench", "--model", "tiny", "--downscale", "1", "--strength", "1", "--steps", "1", "--warmup", "0",
            "--no-memory", "--no-diffusers", "--width", "64", "--height", "64", "--frames", "9", "--json"]
    r = invoke(*args, "--layout", "side-by-side")
    assert r.exit_code == 0, r.output
    assert "side-by-side" in json.loads(r.stdout)["setup"] and set(layouts) == {"side-by-side"}
    r = invoke("bench", "--model", "tiny", "--downscale", "1,2", "--layout", "side-by-side")
    assert r.exit_code == 2 and "--downscale 1" in r.output


def test_training_validation_samples_on_the_runs_layout(run, spy, tmp_path):
    import dataclasses

    from avctl.dataset import load_manifest
    from avctl.lora import add_lora
    from avctl.validation import make_validator
    from tests.tiny import fresh_transformer

    _, data, _ = run
    _, rows = load_manifest(data)
    tr = fresh_transformer()
    add_lora(tr, ("V.SA",), 4)
    bb = dataclasses.replace(backbone(), transformer=tr)
    modality = with_layout(get_modality("detail"), "side-by-side")
    make_validator(bb, data, rows[0], modality, tmp_path, seed=0, steps=1)(1)
    assert spy and {c["layout"] for c in spy} == {"side-by-side"}
    assert (tmp_path / "samples" / "step_00001.mp4").is_file()
