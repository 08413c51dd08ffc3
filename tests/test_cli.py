"""The CLI end to end on the tiny model (in-process CliRunner): the chain, --json output, exit codes, bad input."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from avctl.cli import app
from avctl.media import probe, read_audio, read_video
from tests.conftest import write_synthetic_clip

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args], env={"AVCTL_NO_PROGRESS": "1"})


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """prepare canny → train canny on two synthetic clips: the dataset and run folders."""
    root = tmp_path_factory.mktemp("chain")
    for i in range(2):
        write_synthetic_clip(root / "videos" / f"c{i}.mp4", frames=20, width=160, height=144, fps=24.0, seed=i)
    data, run = root / "datasets" / "canny", root / "runs" / "canny"
    r = invoke("prepare", "canny", root / "videos", "--out", data, "--bucket", "128x128x17", "--json")
    assert r.exit_code == 0, r.output
    r = invoke("train", "canny", "--data", data, "--out", run, "--model", "tiny", "--steps", "4",
               "--save-every", "2", "--json")
    assert r.exit_code == 0, r.output
    return root, data, run, json.loads(r.stdout)


def test_modalities_json_lists_all_thirteen():
    r = invoke("modalities", "--json")
    assert r.exit_code == 0
    rows = json.loads(r.stdout)
    assert len(rows) == 13
    keys = {"name", "category", "streams", "context", "layout", "downscale", "rank", "targets", "steps"}
    assert keys <= rows[0].keys()


def test_train_output_and_lora_metadata(chain):
    _, _, run, result = chain
    assert result["steps"] == 4 and Path(result["lora"]).is_file()
    r = invoke("lora", "inspect", run / "lora.safetensors", "--json")
    info = json.loads(r.stdout)
    assert info["format"] == "comfyui" and info["ranks"] == [32] and info["groups"] == {"V.SA": 8}
    assert info["reference_downscale_factor"] == "2"
    meta = {k.removeprefix("avctl."): json.loads(v) for k, v in info["metadata"].items() if k.startswith("avctl.")}
    assert meta["modality"] == "canny" and meta["context"] == "noised" and meta["audio_ref_time"] == "aligned"
    assert meta["base_model"] == "tiny" and meta["alpha"] == meta["rank"] == 32
    ckpts = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert ckpts == ["step_00002.safetensors", "step_00004.safetensors"]


def test_generate_writes_mp4_and_sidecar(chain):
    root, data, run, _ = chain
    control = sorted((data / "reference").glob("*.mp4"))[0]
    out = root / "out" / "g.mp4"
    args = ["generate", "--prompt", "a red ball", "--lora", f"{run / 'lora.safetensors'}@0.8", "--control", control,
            "--strength", "0.5", "--model", "tiny", "--width", "128", "--height", "128", "--frames", "17",
            "--steps", "2", "--out", out, "--json"]
    r = invoke(*args)
    assert r.exit_code == 0, r.output
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["strength"] == 0.5 and side["seed"] == 42 and side["loras"][0]["scale"] == 0.8
    assert side["modality"] == ["canny"] and side["loras"][0]["downscale"] == 2
    info = probe(out)
    assert info.has_video and info.has_audio
    assert read_video(out).frames.shape[0] == 17
    audio = read_audio(out, 16000)
    assert abs(audio.shape[1] / 16000 - 17 / 24) <= 0.04
    again = invoke(*args)  # never overwrites without --overwrite
    assert again.exit_code == 1 and "--overwrite" in again.output


def test_eval_pair_and_runs(chain):
    root, data, _, _ = chain
    control = sorted((data / "reference").glob("*.mp4"))[0]
    video = sorted((data / "video").glob("*.mp4"))[0]
    r = invoke("eval", "canny", "--control", control, "--video", video, "--json", "--sheet", root / "sheet.png")
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert res["metrics"]["edge_f1"] > 0.5  # the real clip against its own edges
    assert (root / "sheet.png").is_file()


def test_bad_input_gives_one_line_and_nonzero_exit(tmp_path):
    r = invoke("prepare", "canny", tmp_path / "missing")
    assert r.exit_code != 0 and "Traceback" not in r.output
    r = invoke("train", "canny", "--data", tmp_path / "nodata", "--model", "tiny")
    assert r.exit_code == 1 and "nodata" in r.output and "Traceback" not in r.output
    r = invoke("prepare", "nosuch", tmp_path)
    assert r.exit_code == 1 and "unknown modality" in r.output
    r = invoke("generate", "--prompt", "x", "--model", "tiny", "--strength", "0.5")
    assert r.exit_code == 2 and "--width" in r.output
    r = invoke("generate", "--prompt", "x", "--lora", "nope", "--model", "tiny")
    assert r.exit_code == 1 and "tried" in r.output


def test_train_refuses_dataset_of_another_modality(chain):
    _, data, _, _ = chain
    r = invoke("train", "depth", "--data", data, "--model", "tiny", "--steps", "1")
    assert r.exit_code == 1 and "canny" in r.output


def test_train_targets_option_sets_the_lora_modules(chain):
    root, data, _, _ = chain
    run = root / "runs" / "canny-ff"
    r = invoke("train", "canny", "--data", data, "--out", run, "--model", "tiny", "--steps", "1", "--rank", "4",
               "--targets", "V.SA,V.FF")
    assert r.exit_code == 0, r.output
    info = json.loads(invoke("lora", "inspect", run / "lora.safetensors", "--json").stdout)
    assert set(info["groups"]) == {"V.SA", "V.FF"}
    meta = json.loads(info["metadata"]["avctl.targets"])
    assert meta == ["V.SA", "V.FF"]
    bad = root / "runs" / "canny-bad"
    r = invoke("train", "canny", "--data", data, "--out", bad, "--model", "tiny", "--steps", "1", "--targets", "V.XX")
    assert r.exit_code == 1 and "V.XX" in r.output and len(r.output.strip().splitlines()) == 1
    assert not (bad / "lora.safetensors").exists()


def test_prepare_line_width_is_recorded_and_reaches_the_lora(chain):
    root, _, _, _ = chain
    data = root / "datasets" / "canny-thick"
    r = invoke("prepare", "canny", root / "videos", "--out", data, "--bucket", "128x128x17", "--line-width", "3",
               "--json")
    assert r.exit_code == 0, r.output
    info = json.loads((data / "avctl.json").read_text())
    assert info["extractor_options"] == {"line_width": 3} and "lines 3 px" in info["extractor"]["version"]
    r = invoke("prepare", "canny", root / "videos", "--out", data, "--bucket", "128x128x17", "--json")
    assert r.exit_code == 1 and "extractor" in r.output  # another width into the same dataset is refused
    r = invoke("prepare", "depth", root / "videos", "--out", root / "datasets" / "d", "--line-width", "3")
    assert r.exit_code == 2 and "--line-width" in r.output and len(r.output.strip().splitlines()) == 1
    run = root / "runs" / "canny-thick"
    r = invoke("train", "canny", "--data", data, "--out", run, "--model", "tiny", "--steps", "1", "--rank", "4")
    assert r.exit_code == 0, r.output
    meta = json.loads(invoke("lora", "inspect", run / "lora.safetensors", "--json").stdout)["metadata"]
    assert json.loads(meta["avctl.extractor_options"]) == {"line_width": 3}


def test_missing_weights_error_is_immediate_and_clear(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    r = invoke("bench", "--model", "Lightricks/LTX-2", "--json")
    assert r.exit_code == 1 and "Lightricks/LTX-2" in r.output and "download" in r.output


def test_bench_json_rows():
    r = invoke("bench", "--model", "tiny", "--downscale", "1,2", "--strength", "1,0.5", "--steps", "1",
               "--warmup", "0", "--no-memory", "--json")
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)["rows"]
    avctl_rows = [x for x in rows if x["path"] == "avctl"]
    assert len(avctl_rows) == 1 + 2 * 2 + 1  # the baseline, each setting, and 1× at 0 (to compare with diffusers)
    assert {"downscale", "strength", "tokens", "step_latency_s", "peak_mem_bytes", "ratio_vs_1x",
            "predicted_ratio_vs_1x"} <= rows[0].keys()
    two = next(x for x in avctl_rows if x["downscale"] == 2 and x["strength"] == 1.0)
    one = next(x for x in avctl_rows if x["downscale"] == 1 and x["strength"] == 1.0)
    assert two["tokens"] < one["tokens"] and 0 < two["predicted_ratio_vs_1x"] < 1
    assert [x["strength"] for x in rows if x["path"] == "diffusers"] == [1.0, 0.0]
    assert all(x["avctl_over_diffusers"] > 0 for x in rows if x["path"] == "diffusers")


def test_bench_cpu_memory_per_setting_and_plot(tmp_path):
    r = invoke("bench", "--model", "tiny", "--downscale", "2", "--strength", "1", "--steps", "1", "--warmup", "0",
               "--no-diffusers", "--json", "--plot", tmp_path / "bench.png")
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)["rows"]
    assert len(rows) == 2 and all(x["peak_mem_bytes"] > 100 * 2**20 for x in rows)  # a forked child's peak RSS
    assert (tmp_path / "bench.png").stat().st_size > 1000


def test_console_script_exit_codes():
    """One real process: the installed entry point, usage errors exit 2."""
    r = subprocess.run([sys.executable, "-m", "avctl.cli", "train"], capture_output=True, text=True)
    assert r.returncode == 2


def test_validation_samples_do_not_disturb_training(chain):
    from safetensors.torch import load_file

    root, data, _, _ = chain
    a, b = root / "val_on", root / "val_off"
    common = ["train", "canny", "--data", data, "--model", "tiny", "--steps", "3", "--rank", "4"]
    assert invoke(*common, "--out", a, "--validate-every", "2").exit_code == 0
    assert invoke(*common, "--out", b).exit_code == 0
    assert (a / "samples" / "step_00002.mp4").is_file() and (a / "samples" / "step_00002.png").is_file()
    wa, wb = load_file(str(a / "lora.safetensors")), load_file(str(b / "lora.safetensors"))
    assert wa.keys() == wb.keys() and all((wa[k] == wb[k]).all() for k in wa)


def test_bench_reports_prepare_throughput():
    r = invoke("bench", "--prepare", "canny", "--frames", "5", "--json")
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert res["modality"] == "canny" and res["size"] == 512 and res["frames_per_s"] > 0
