"""`generate`'s one request model (flags, --config, --batch rows and the sidecar share it) and the round trip a user
makes: a reference `prepare` wrote, fed back as --control, gives a full-size output."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from avctl.cli import app, generate_cmd
from avctl.errors import BadUsage
from avctl.generation import GenerateRequest, batch_requests, build_request, make_request
from avctl.lora import add_lora, lora_state_dict, save_lora
from avctl.media import read_video
from tests.conftest import write_synthetic_clip
from tests.tiny import fresh_transformer

runner = CliRunner()


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args], env={"AVCTL_NO_PROGRESS": "1"})


@pytest.fixture(scope="module")
def canny_lora(tmp_path_factory) -> Path:
    """A canny LoRA with reference downscale 2 and random (non-zero) weights."""
    path = tmp_path_factory.mktemp("lora") / "canny.safetensors"
    tr = fresh_transformer()
    add_lora(tr, ("V.SA",), rank=4)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in tr.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    save_lora(path, lora_state_dict(tr), downscale=2, avctl_meta={"modality": "canny", "streams": ["video"]})
    return path


# ------------------------------------------------------------------------------------------------ the round trip
def test_a_prepared_2x_reference_is_taken_as_it_is_and_the_output_is_full_size(tmp_path, canny_lora):
    """prepare writes a 2× canny reference (96 px for a 192 px bucket); generate takes it as --control without
    --width/--height and makes a video of the model's size (tiny: 128), the control resized to 64 px. Sized from
    the control (96 px, not a multiple of 64) it was refused; a 64 px reference gave a half-size video."""
    write_synthetic_clip(tmp_path / "videos" / "a.mp4", frames=12, width=200, height=200, fps=24.0, seed=3)
    data = tmp_path / "data"
    r = invoke("prepare", "canny", tmp_path / "videos", "--out", data, "--bucket", "192x192x9", "--json")
    assert r.exit_code == 0, r.output
    reference = sorted((data / "reference").glob("*.mp4"))[0]
    assert read_video(reference).frames.shape[1:3] == (96, 96)
    out = tmp_path / "g.mp4"
    r = invoke("generate", "--prompt", "x", "--model", "tiny", "--lora", canny_lora, "--control", reference,
               "--steps", 1, "--out", out, "--json")
    assert r.exit_code == 0, r.output
    side = json.loads(r.stdout)
    assert (side["size"]["width"], side["size"]["height"], side["size"]["frames"]) == (128, 128, 9)
    assert read_video(out).frames.shape == (9, 128, 128, 3)
    # --width/--height size it instead: the same reference is resized to 96 px, half of 192
    r = invoke("generate", "--prompt", "x", "--model", "tiny", "--lora", canny_lora, "--control", reference,
               "--width", 192, "--height", 192, "--steps", 1, "--out", tmp_path / "big.mp4", "--json")
    assert r.exit_code == 0, r.output
    assert read_video(tmp_path / "big.mp4").frames.shape == (9, 192, 192, 3)


def test_a_half_size_control_no_longer_halves_the_output(tmp_path, canny_lora):
    """A 64 px 2× reference (from a 128 px bucket) gives a 128 px video, not a 64 px one."""
    control = write_synthetic_clip(tmp_path / "ref.mp4", frames=9, width=64, height=64, fps=24.0, seed=1,
                                   audio_channels=None)
    r = invoke("generate", "--prompt", "x", "--model", "tiny", "--lora", canny_lora, "--control", control,
               "--steps", 1, "--out", tmp_path / "g.mp4", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["size"]["width"] == 128
    assert read_video(tmp_path / "g.mp4").frames.shape[1:3] == (128, 128)


# ------------------------------------------------------------------------------------------------ the request model
def test_the_request_refuses_what_the_flags_would(tmp_path):
    with pytest.raises(BadUsage, match="unknown key"):
        make_request({"promt": "x"})
    with pytest.raises(BadUsage, match="'seed'"):
        make_request({"seed": "3"})
    with pytest.raises(BadUsage, match="'width'"):
        make_request({"width": True})
    with pytest.raises(BadUsage, match=r"--strength 1.5 is outside \[0, 1\]"):
        make_request({"strength": 1.5})
    with pytest.raises(BadUsage, match="--strength-ramp"):
        make_request({"strength_ramp": "1-0"})
    with pytest.raises(BadUsage, match="--stg-blocks: block indices start at 0"):
        make_request({"stg_blocks": "-1"})
    with pytest.raises(BadUsage, match="--preset 'best'"):
        make_request({"preset": "best"})
    with pytest.raises(BadUsage, match="--two-stage needs"):
        make_request({"two_stage": True})
    with pytest.raises(BadUsage, match="keep one stream"):
        make_request({"keep_video": "a.mp4", "keep_audio": "b.wav"})
    with pytest.raises(BadUsage, match=r"must end in \.mp4"):
        make_request({"out": "a.mov"})
    req = make_request({"lora": "a", "stg_blocks": "28,29", "cfg": 2.0, "guidance_scale": 3.0})
    assert req.lora == ["a"] and req.guidance_overrides() == {"cfg": 3.0, "audio_cfg": 2.0, "stg_blocks": (28, 29)}


def test_the_flags_defaults_are_the_requests():
    """One schema: every generate flag that is a request field has the model's default."""
    fields = GenerateRequest.model_fields
    renamed = {"out_path": "out"}
    checked = 0
    for name, param in inspect.signature(generate_cmd).parameters.items():
        key = renamed.get(name, name)
        if key not in fields:
            continue
        default = fields[key].get_default(call_default_factory=True)
        assert param.default == default or (param.default is None and default == []), key
        checked += 1
    assert checked == len(fields)


def test_batch_rows_are_requests_over_the_flags(tmp_path):
    base = make_request({"prompt": "p", "seed": 9, "out": tmp_path / "b.mp4", "steps": 3})
    batch = tmp_path / "rows.jsonl"
    batch.write_text("\n".join(json.dumps(r) for r in (
        {"seed": 3, "preset": "plain"}, {"seed": "3"}, {"model": "tiny"}, {"nope": 1}, {"lora": "a"})) + "\n")
    rows = dict(batch_requests(batch, base))
    assert isinstance(rows[1], GenerateRequest) and rows[1].seed == 3 and rows[1].preset == "plain"
    assert rows[1].steps == 3 and rows[1].prompt == "p" and rows[1].out == tmp_path / "b-001.mp4"
    assert "'seed'" in rows[2] and "same for every row" in rows[3] and "unknown key(s) nope" in rows[4]
    assert rows[5].lora == ["a"]
    yaml_batch = tmp_path / "rows.yaml"
    yaml_batch.write_text("- {prompt: a, seed: 1}\n- prompt: b\n  width: 64\n")
    rows = dict(batch_requests(yaml_batch, base))
    assert rows[1].seed == 1 and rows[2].width == 64 and rows[2].out == tmp_path / "b-002.mp4"


def test_config_file_with_flags_over_it_and_a_sidecar_redoes_its_generation(tmp_path):
    config = tmp_path / "gen.yaml"
    config.write_text(f"prompt: a red ball\nmodel: tiny\nwidth: 64\nheight: 64\nframes: 9\nsteps: 1\nseed: 5\n"
                      f"preset: plain\nout: {tmp_path / 'a.mp4'}\n")
    assert build_request(config, {"seed": 7}).seed == 7
    r = invoke("generate", "--config", config, "--seed", 7, "--json")
    assert r.exit_code == 0, r.output
    side = json.loads((tmp_path / "a.json").read_text())
    assert side["seed"] == 7 and side["steps"] == 1 and side["size"]["width"] == 64
    assert side["request"]["seed"] == 7 and side["request"]["prompt"] == "a red ball"
    # the sidecar as --config: the same generation again
    r = invoke("generate", "--config", tmp_path / "a.json", "--out", tmp_path / "b.mp4", "--json")
    assert r.exit_code == 0, r.output
    again = json.loads((tmp_path / "b.json").read_text())
    assert again["request"] == {**side["request"], "out": str(tmp_path / "b.mp4")}
    first, second = read_video(tmp_path / "a.mp4").frames, read_video(tmp_path / "b.mp4").frames
    assert np.array_equal(first, second)
    (tmp_path / "bad.yaml").write_text("prompt: x\nstep: 3\n")
    r = invoke("generate", "--config", tmp_path / "bad.yaml")
    assert r.exit_code == 2 and "unknown key(s) step" in r.output and "Traceback" not in r.output


def test_cli_imports_only_library_entry_points():
    """cli.py parses and prints: it reaches the model, media, data and camera layers only through the library."""
    import ast

    import avctl.cli

    tree = ast.parse(Path(avctl.cli.__file__).read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    below = {f"avctl.{name}" for name in ("backbone", "media", "dataset", "cache", "camera", "sample", "canvas")}
    assert not imported & below, sorted(imported & below)
    assert not any(node.module == "avctl" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom))
