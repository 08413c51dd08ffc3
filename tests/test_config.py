"""Config files: the nested format, an ltx-trainer IC-LoRA config read as it is, the shipped per-modality configs."""

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from avctl.cli import app
from avctl.config import (
    FLAT_KEYS,
    LTX_UNUSED,
    LTX_UNUSED_SECTIONS,
    check_avctl_dataset,
    prepare_options,
    train_options,
)
from avctl.errors import BadInput, BadUsage
from avctl.modalities.base import all_modalities, get_modality
from avctl.train import TrainConfig
from tests.conftest import write_synthetic_clip

ROOT = Path(__file__).resolve().parents[1]
LTX_FIXTURE = Path(__file__).parent / "fixtures" / "ltx_trainer_v2v_ic_lora.yaml"
CANNY = get_modality("canny")
BUILT_IN = ("audio-intensity", "camera-image", "camera-video", "canny", "cut-on-action", "depth", "detail", "inpaint",
            "local-edit", "pose", "speech-ambient", "tracks", "who-is-talking")
runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], env={"AVCTL_NO_PROGRESS": "1"})


def ltx_config(tmp_path, data=None, edit=None):
    """The ltx-trainer fixture with its data and output pointed into tmp_path, optionally edited."""
    d = yaml.safe_load(LTX_FIXTURE.read_text())
    d["data"]["preprocessed_data_root"] = str(data or tmp_path / "data")
    d["output_dir"] = str(tmp_path / "run")
    if edit:
        edit(d)
    path = tmp_path / "v2v_ic_lora.yaml"
    path.write_text(yaml.safe_dump(d, allow_unicode=True))
    return path


def test_ltx_trainer_ic_lora_config_maps_its_keys(tmp_path):
    path = ltx_config(tmp_path)
    opts = train_options(path, CANNY)
    assert opts.values == {
        "model": "path/to/ltx-2-model.safetensors", "data": str(tmp_path / "data"), "out": str(tmp_path / "run"),
        "seed": 42, "rank": 32, "targets": ["V.SA", "V.CA", "V.FF"], "lr": 2e-4, "steps": 3000, "batch_size": 1,
        "grad_accum": 1, "max_grad_norm": 1.0, "optimizer": "adamw", "gradient_checkpointing": True,
        "dtype": "bf16", "text_encoder_8bit": False, "loader_workers": 2, "validate_every": 100, "save_every": 250,
        "keep_last": 3,
    }
    TrainConfig(modality="canny", **opts.values)  # every mapped value is one TrainConfig takes
    warning = opts.warning(path)
    assert "\n" not in warning and str(path) in warning
    for name in ("training_strategy", "flow_matching", "hub", "wandb", "model.text_encoder_path",
                 "optimization.scheduler_params", "acceleration.offload_optimizer_during_validation",
                 "checkpoints.precision", "samples", "stg_blocks"):
        assert name in warning
    for mapped in ("learning_rate", "interval", "preprocessed_data_root", "target_modules", "mixed_precision_mode"):
        assert mapped not in warning


@pytest.mark.parametrize("edit, match", [
    (lambda d: d["optimization"].update(learnin_rate=1e-4), "unknown key 'optimization.learnin_rate'"),
    (lambda d: d.update(cs_fluctuation={"enabled": False}), "unknown key 'cs_fluctuation'"),
    (lambda d: d["wandb"].update(run_name="x"), "unknown key 'wandb.run_name'"),
    (lambda d: d["validation"].update(sample_every=3), "unknown key 'validation.sample_every'"),
])
def test_unknown_keys_are_refused_naming_the_key_and_the_file(tmp_path, edit, match):
    path = ltx_config(tmp_path, edit=edit)
    with pytest.raises(BadUsage, match=match) as exc:
        train_options(path, CANNY)
    assert str(path) in str(exc.value) and "\n" not in str(exc.value)


@pytest.mark.parametrize("edit, match", [
    (lambda d: d["model"].update(training_mode="full"), "training_mode"),
    (lambda d: d["model"].update(load_checkpoint="outputs/ckpt"), "load_checkpoint"),
    (lambda d: d["lora"].update(alpha=16), "alpha 16 must equal the rank, 32"),
    (lambda d: d["lora"].update(dropout=0.1), "no dropout"),
    (lambda d: d["lora"].update(target_modules=["attn1.to_k"]), "part of group V.SA.*attn1.to_q"),
    (lambda d: d["lora"].update(target_modules=["proj_in"]), "'proj_in' matches none"),
    (lambda d: d["optimization"].update(scheduler_type="cosine"), "scheduler_type"),
    (lambda d: d["optimization"].update(optimizer_type="prodigy"), "optimizer_type"),
    (lambda d: d["acceleration"].update(mixed_precision_mode="fp16"), "mixed_precision_mode"),
    (lambda d: d["acceleration"].update(quantization="int4-quanto"), "quantization"),
    (lambda d: d.update(modality="depth"), "for modality 'depth', not 'canny'"),
])
def test_values_avctl_cannot_honour_are_refused(tmp_path, edit, match):
    with pytest.raises(BadUsage, match=match):
        train_options(ltx_config(tmp_path, edit=edit), CANNY)


def test_target_modules_map_to_whole_groups_and_quanto_names_to_avctl_quantization(tmp_path):
    def edit(d):
        d["lora"]["target_modules"] = ["to_k", "to_q", "to_v", "to_out.0"]  # ltx-trainer's default: every attention
        d["acceleration"]["quantization"] = "int8-quanto"
        d["optimization"]["scheduler_type"] = "constant"
        d["checkpoints"]["no_resume"] = True

    opts = train_options(ltx_config(tmp_path, edit=edit), CANNY)
    assert opts.values["targets"] == ["V.SA", "V.CA", "A.SA", "A.CA", "A→V", "V→A"]
    assert opts.values["quantize"] == "int8"
    assert opts.values["lr_end"] == opts.values["lr"] == 2e-4  # constant: the schedule ends where it starts
    assert opts.resume is False


def test_ltx_precomputed_data_is_refused(tmp_path):
    pre = tmp_path / "clips" / ".precomputed"
    (pre / "latents").mkdir(parents=True)
    (pre / "latents" / "a.pt").write_bytes(b"\x80\x04N.")  # a pickle, never opened
    for data in (pre, pre / "latents", tmp_path / "clips"):
        with pytest.raises(BadInput, match="pickles"):
            check_avctl_dataset(data)
    r = invoke("train", "canny", "--config", ltx_config(tmp_path, data=pre), "--model", "tiny")
    assert r.exit_code == 1 and "pickles" in r.output and "Traceback" not in r.output
    r = invoke("prepare", "canny", tmp_path, "--out", pre)
    assert r.exit_code == 1 and "pickles" in r.output


@pytest.mark.parametrize("extra", [{"AVCTL_MODEL": "pocket"}, {"env": {"HF_HUB_OFFLINE": "0"}},
                                   {"model": {"HF_HOME": "/x"}}])
def test_config_files_cannot_set_environment_variables(tmp_path, extra):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"modality": "canny", **extra}))
    with pytest.raises(BadUsage, match="environment"):
        train_options(path, CANNY)


def test_flat_files_are_still_read(tmp_path):
    assert set(FLAT_KEYS) == set(TrainConfig.model_fields)  # every TrainConfig field has its nested place
    path = tmp_path / "flat.toml"
    path.write_text('lr = 0.001\ngrad_accum = 2\ntargets = ["V.SA", "V.FF"]\ndtype = "fp32"\nsave_every = 5\n')
    assert train_options(path, CANNY).values == {"lr": 0.001, "grad_accum": 2, "targets": ["V.SA", "V.FF"],
                                                 "dtype": "fp32", "save_every": 5}
    path.write_text('lr = 0.001\n[optimization]\nsteps = 3\n')  # flat and nested mixed: lr is no section key
    with pytest.raises(BadUsage, match="unknown key 'lr'"):
        train_options(path, CANNY)


def test_shipped_configs_hold_each_modality_defaults(tmp_path):
    names = {m for m in all_modalities() if m in BUILT_IN}
    assert names == set(BUILT_IN)
    for name in BUILT_IN:
        mod, path = get_modality(name), ROOT / "configs" / f"{name}.yaml"
        opts = train_options(path, mod)
        assert not opts.unused
        v = opts.values
        assert (v["rank"], v["steps"], v["targets"], v["layout"]) == (mod.rank, mod.steps, list(mod.targets),
                                                                      mod.layout), name
        assert yaml.safe_load(path.read_text())["reference"]["downscale_factor"] == mod.downscale
        TrainConfig(**v)
        assert prepare_options(path, mod).values == {"out": f"datasets/{name}", "seed": 42}

    wrong = tmp_path / "canny.yaml"
    text = (ROOT / "configs" / "canny.yaml").read_text()
    wrong.write_text(text.replace("downscale_factor: 2", "downscale_factor: 1"))
    with pytest.raises(BadUsage, match="downscale_factor 1 differs from canny's 2"):
        train_options(wrong, CANNY)


def test_help_mentions_config():
    for command in ("train", "prepare"):
        r = invoke(command, "--help")
        assert "--config" in r.output and "docs/configs.md" in r.output


def test_known_unused_keys_are_disjoint_from_mapped_ones():
    from avctl.config import AvctlConfig

    for section, keys in LTX_UNUSED.items():
        assert not set(keys) & set(AvctlConfig.model_fields[section].annotation.model_fields), section
    assert not set(LTX_UNUSED_SECTIONS) & set(AvctlConfig.model_fields)


def test_prepare_and_train_from_config_files(tmp_path):
    """prepare from an avctl config (its data root and prepare section), then train 2 steps on the tiny model from
    an ltx-trainer IC-LoRA config pointing at that dataset; flags override the files."""
    for i in range(2):
        write_synthetic_clip(tmp_path / "videos" / f"c{i}.mp4", frames=20, width=160, height=144, fps=24.0, seed=i)
    cfg = yaml.safe_load((ROOT / "configs" / "canny.yaml").read_text())
    cfg["data"]["preprocessed_data_root"] = str(tmp_path / "data")
    cfg["prepare"] = {"bucket": "128x128x17", "line_width": 2}
    (tmp_path / "canny.yaml").write_text(yaml.safe_dump(cfg, allow_unicode=True))
    r = invoke("prepare", "canny", tmp_path / "videos", "--config", tmp_path / "canny.yaml", "--json")
    assert r.exit_code == 0, r.output
    info = json.loads((tmp_path / "data" / "avctl.json").read_text())
    assert info["bucket"] == "128x128x17" and info["extractor_options"]["line_width"] == 2

    path = ltx_config(tmp_path, data=tmp_path / "data")
    r = invoke("train", "canny", "--config", path, "--model", "tiny", "--steps", "2", "--json")
    assert r.exit_code == 0, r.output
    warnings = [line for line in r.output.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "training_strategy" in warnings[0]
    result = json.loads(r.stdout)
    assert result["steps"] == 2 and result["out"] == str(tmp_path / "run")
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["lr"] == pytest.approx(2e-4)  # optimization.learning_rate
    from safetensors import safe_open

    with safe_open(tmp_path / "run" / "lora.safetensors", "pt") as f:
        meta = f.metadata()
    assert json.loads(meta["avctl.targets"]) == ["V.SA", "V.CA", "V.FF"]  # lora.target_modules
    assert json.loads(meta["avctl.rank"]) == 32
