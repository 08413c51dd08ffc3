"""Training memory: fp32 adapters over a bf16 base, a cache streamed from disk (RSS flat in the dataset size and in
time, the run's order kept exactly), encoders loaded only to fill the cache and released before the transformer."""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import weakref
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from avctl.cache import MEDIA_COMPONENTS, TEXT_COMPONENTS, CachedSamples, Sample, to_stored
from avctl.modalities.base import get_modality
from avctl.train import TrainConfig, default_checkpointing, train
from tests.conftest import write_synthetic_clip
from tests.test_train import make_samples
from tests.tiny import fresh_transformer

CANNY = get_modality("canny")
ROOT = Path(__file__).resolve().parents[1]


def _state(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(next((run / "state").glob("state_*.safetensors"))))


def _two_runs(tmp_path: Path, dtype: str) -> tuple[dict, dict, torch.nn.Module]:
    """The resume states after step 1 and after step 2 (two runs of one seed), lr 1e-5 constant."""
    out = {}
    for steps in (1, 2):
        tr = fresh_transformer()
        cfg = TrainConfig(modality="canny", out=tmp_path / f"s{steps}", steps=steps, rank=4, save_every=1,
                          lr=1e-5, lr_end=1e-5, dtype=dtype)
        train(cfg, CANNY, make_samples(), tr, {})
        out[steps] = _state(tmp_path / f"s{steps}")
    return out[1], out[2], tr


def _changed(before: dict, after: dict, part: str) -> float:
    keys = [k for k in before if k.startswith("lora.") and part in k]
    return sum(int((before[k] != after[k]).sum()) for k in keys) / sum(before[k].numel() for k in keys)


def test_adapters_grads_and_moments_are_fp32_over_a_bf16_base(tmp_path):
    one, two, tr = _two_runs(tmp_path, "bf16")
    assert all(p.dtype == torch.bfloat16 for n, p in tr.named_parameters() if "lora_" not in n)
    lora = [p for n, p in tr.named_parameters() if "lora_" in n]
    assert lora and all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in lora)
    saved = [k for k in two if k.split(".")[0] in ("lora", "exp_avg", "exp_avg_sq")]
    assert saved and all(two[k].dtype == torch.float32 for k in saved)
    assert json.loads((tmp_path / "s2" / "state" / "state.json").read_text())["base_dtype"] == "torch.bfloat16"
    assert _changed(one, two, "lora_A") >= 0.99  # step 1 moves only B (B starts at 0); step 2 moves A


def test_bf16_adapters_would_lose_the_updates(tmp_path, monkeypatch):
    """The check above fails when the adapters stay in the base's dtype (what diffusers' add_adapter gives)."""
    import peft.tuners.tuners_utils

    monkeypatch.setattr(peft.tuners.tuners_utils, "cast_adapter_dtype", lambda *a, **k: None)
    one, two, _ = _two_runs(tmp_path, "bf16")
    assert two["lora.transformer_blocks.0.attn1.to_q.lora_A.weight"].dtype == torch.float32  # saved upcast...
    assert _changed(one, two, "lora_A") < 0.99  # ...but most bf16 updates were rounded away


def test_resume_refuses_another_base_dtype(tmp_path):
    from avctl.errors import BadUsage

    cfg = {"modality": "canny", "out": tmp_path / "r", "rank": 4, "save_every": 1}
    train(TrainConfig(steps=1, **cfg), CANNY, make_samples(), fresh_transformer(), {})
    with pytest.raises(BadUsage, match="bfloat16"):
        train(TrainConfig(steps=2, **cfg), CANNY, make_samples(), fresh_transformer().to(torch.bfloat16), {})


def _write_cache(folder: Path, samples: list[Sample]) -> list[Path]:
    paths = []
    for i, s in enumerate(samples):
        tensors = to_stored({"video": s.video, "audio": s.audio, "reference": s.reference, "text_video": s.text_video,
                             "text_audio": s.text_audio, "text_mask": s.text_mask, "fps": torch.tensor(s.fps)})
        paths.append(folder / f"s{i}.safetensors")
        folder.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(paths[-1]))
    return paths


@pytest.mark.parametrize("workers", [0, 2])
def test_streamed_cache_trains_exactly_like_the_samples_in_memory(tmp_path, workers):
    """The DataLoader reads in the run's own order (several epochs, batch 2), also with worker processes, and a
    killed streamed run resumes bit-identically."""
    paths = _write_cache(tmp_path / "cache", make_samples(5))
    in_memory = [CachedSamples(paths)[i] for i in range(5)]
    kw = {"modality": "canny", "steps": 6, "rank": 4, "save_every": 3, "lr": 1e-3, "batch_size": 2}
    a = train(TrainConfig(out=tmp_path / "a", **kw), CANNY, in_memory, fresh_transformer(), {})
    b_cfg = TrainConfig(out=tmp_path / "b", loader_workers=workers, **kw)
    train(b_cfg, CANNY, CachedSamples(paths), fresh_transformer(), {}, stop_after=4)
    b = train(b_cfg, CANNY, CachedSamples(paths), fresh_transformer(), {})
    assert b.resumed_from == 3
    la, lb = load_file(str(a.lora_path)), load_file(str(b.lora_path))
    assert la.keys() == lb.keys() and all(torch.equal(la[k], lb[k]) for k in la)


def test_checkpointing_defaults_on_above_pockets_size():
    import dataclasses

    from accelerate import init_empty_weights
    from diffusers import LTX2VideoTransformer3DModel

    from avctl.backbone import POCKET_DIR

    cpu = torch.device("cpu")
    assert not default_checkpointing(fresh_transformer(), cpu)
    config = json.loads((POCKET_DIR / "transformer" / "config.json").read_text())
    with init_empty_weights():
        pocket = LTX2VideoTransformer3DModel.from_config(config)
        bigger = LTX2VideoTransformer3DModel.from_config({**config, "num_layers": config["num_layers"] + 1})
    assert not default_checkpointing(pocket, cpu) and default_checkpointing(bigger, cpu)
    assert default_checkpointing(fresh_transformer(), torch.device("cuda"))
    del dataclasses


# ------------------------------------------------------------------------------------------------ RSS
_RSS_SCRIPT = r"""
import json, resource, sys
import torch
from avctl.cache import CachedSamples
from avctl.train import TrainConfig, train
from avctl.modalities.base import get_modality
from tests.tiny import fresh_transformer

paths, steps, out, marks = json.loads(sys.argv[1])
tr = fresh_transformer()
page = __import__("os").sysconf("SC_PAGE_SIZE")
seen = {}

def progress(step, total, row):
    if step in marks:
        with open("/proc/self/statm") as f:
            seen[step] = int(f.read().split()[1]) * page
cfg = TrainConfig(modality="canny", out=out, steps=steps, rank=4, save_every=50, lr=1e-4)
train(cfg, get_modality("canny"), CachedSamples(paths), tr, {}, progress=progress)
print(json.dumps({"peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "rss": seen}))
"""


def _run_rss(paths: list[Path], steps: int, out: Path, marks: list[int]) -> dict:
    arg = json.dumps([[str(p) for p in paths], steps, str(out), marks])
    env = {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    r = subprocess.run([sys.executable, "-c", _RSS_SCRIPT, arg], capture_output=True, text=True, env=env, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def _big_samples(n: int, text_tokens: int) -> list[Sample]:
    """Samples whose text embeddings make each cache file ≥ 20 MB in bf16 (a real LTX-2 sample's are ~31 MB)."""
    base = make_samples(2)
    g = torch.Generator().manual_seed(0)
    tv = torch.randn(text_tokens, base[0].text_video.shape[1], generator=g)
    ta = torch.randn(text_tokens, base[0].text_audio.shape[1], generator=g)
    return [Sample(video=s.video, audio=s.audio, reference=s.reference, text_video=tv, text_audio=ta,
                   text_mask=torch.ones(text_tokens), fps=s.fps) for s in (base * n)[:n]]


def test_training_rss_does_not_grow_with_the_dataset(tmp_path):
    """Peak RSS of a fresh process training 3 steps over 8 and over 64 cache files of ≥ 20 MB each (1.3 GB in all):
    within 10 %. Samples held in RAM (as before streaming, in fp32) would add ~2.5 GB for 64."""
    samples = _big_samples(1, 160_000)
    paths = _write_cache(tmp_path / "cache", samples)
    paths += [paths[0].with_name(f"s{i}.safetensors") for i in range(1, 64)]
    for p in paths[1:]:
        p.write_bytes(paths[0].read_bytes())
    assert paths[0].stat().st_size >= 20e6
    small = _run_rss(paths[:8], 3, tmp_path / "r8", [])
    assert 56 * paths[0].stat().st_size > 0.10 * small["peak"]  # 56 more samples held in RAM would fail the bound
    large = _run_rss(paths, 3, tmp_path / "r64", [])
    print(f"peak RSS: 8 samples {small['peak'] / 2**20:.0f} MiB, 64 samples {large['peak'] / 2**20:.0f} MiB")
    assert large["peak"] <= 1.10 * small["peak"], (small, large)


def test_training_rss_does_not_grow_with_time(tmp_path):
    paths = _write_cache(tmp_path / "cache", make_samples(8))
    rss = _run_rss(paths, 200, tmp_path / "run", [20, 200])["rss"]
    print(f"RSS after step 20 {rss['20'] / 2**20:.0f} MiB, after step 200 {rss['200'] / 2**20:.0f} MiB")
    assert rss["200"] <= 1.05 * rss["20"], rss


# ------------------------------------------------------------------------------------------------ the command
runner = CliRunner()


def _invoke(*args):
    return runner.invoke(__import__("avctl.cli", fromlist=["app"]).app, [str(a) for a in args],
                         env={"AVCTL_NO_PROGRESS": "1"})


class _Loads:
    """Records every load_backbone call (its components) and keeps weak references to the modules it returned,
    to tell whether the encoders were released before the transformer was loaded."""

    def __init__(self, monkeypatch):
        import avctl.backbone

        self.calls: list[frozenset[str]] = []
        self.modules: list[weakref.ref] = []  # every encoder / decoder module any load returned
        self.alive_at_load: list[int] = []  # how many of those were still alive when each load began
        real = avctl.backbone.load_backbone

        def load(name=None, device=None, dtype=None, components=None, **kw):
            gc.collect()
            wanted = frozenset(components) if components is not None else frozenset(avctl.backbone.COMPONENTS)
            self.alive_at_load.append(sum(r() is not None for r in self.modules))
            bb = real(name, device=device, dtype=dtype, components=components, **kw)
            self.calls.append(wanted)
            self.modules += [weakref.ref(getattr(bb, c)) for c in ("vae", "audio_vae", "text_encoder", "connectors",
                                                                    "vocoder") if getattr(bb, c) is not None]
            return bb

        monkeypatch.setattr(avctl.backbone, "load_backbone", load)


@pytest.fixture
def dataset(tmp_path):
    for i in range(2):
        write_synthetic_clip(tmp_path / "videos" / f"c{i}.mp4", frames=9, width=64, height=64, seed=i)
    return tmp_path


def test_train_loads_encoders_only_for_a_stale_cache_and_releases_them_first(dataset, monkeypatch):
    data = dataset / "ds"
    assert _invoke("prepare", "canny", dataset / "videos", "--out", data, "--bucket", "64x64x9").exit_code == 0
    loads = _Loads(monkeypatch)
    common = ["train", "canny", "--data", data, "--model", "tiny", "--steps", "2", "--rank", "4"]
    r = _invoke(*common, "--out", dataset / "a", "--validate-every", "2")
    assert r.exit_code == 0, r.output
    decoders = frozenset({"vae", "audio_vae", "vocoder"})
    assert loads.calls == [frozenset(), TEXT_COMPONENTS, MEDIA_COMPONENTS, frozenset({"transformer"}), decoders]
    # The text encoder is gone before the VAEs load, those before the transformer, and validation's after the call.
    assert loads.alive_at_load == [0, 0, 0, 0, 0]
    gc.collect()
    assert loads.modules and all(r() is None for r in loads.modules)
    assert (dataset / "a" / "samples" / "step_00002.mp4").is_file()

    loads.calls.clear()
    r = _invoke(*common, "--out", dataset / "b", "--validate-every", "2")  # the cache and the prompt are complete
    assert r.exit_code == 0, r.output
    assert loads.calls == [frozenset(), frozenset({"transformer"}), decoders]  # no text encoder, no encoding


def test_prepare_precompute_leaves_train_nothing_to_encode(dataset, monkeypatch):
    data = dataset / "ds"
    r = _invoke("prepare", "canny", dataset / "videos", "--out", data, "--bucket", "64x64x9", "--model", "tiny",
                "--precompute", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["encoded"] == 2
    # The two passes (text encoder, then VAEs) write what one pass with every encoder loaded writes.
    from avctl.cache import cache_file_name, encode_sample
    from avctl.dataset import load_manifest
    from tests.tiny import backbone

    _, rows = load_manifest(data)
    files = sorted((data / ".precomputed").rglob("*.safetensors"))
    assert len(files) == 2 and not any(f.name.startswith(".") for f in files)  # no part file left
    for row in rows:
        one = encode_sample(backbone(), data, row)
        cached = load_file(str(next(f for f in files if f.name == cache_file_name(row["video"]))))
        assert cached.keys() == one.keys() and all(torch.equal(cached[k], one[k]) for k in one)
    loads = _Loads(monkeypatch)
    r = _invoke("train", "canny", "--data", data, "--out", dataset / "run", "--model", "tiny", "--steps", "1",
                "--rank", "4")
    assert r.exit_code == 0, r.output
    assert loads.calls == [frozenset(), frozenset({"transformer"})]


# ------------------------------------------------------------------------------------------------ real shapes
def _train_cli(*args) -> dict:
    env = {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "2", "HF_HUB_OFFLINE": "1", "AVCTL_NO_PROGRESS": "1",
           "PATH": "/usr/bin:/bin"}
    r = subprocess.run([sys.executable, "-m", "avctl.cli", "train", *map(str, args), "--json"], capture_output=True,
                       text=True, env=env, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout)


def test_shape_1_trains_in_bf16_with_fp32_adapters_from_a_filled_cache(dataset):
    """`train canny --model shape:1 --dtype bf16` (LTX-2's real widths, one block) on a prepared 64x64x9 dataset whose
    cache is already filled, so only the transformer loads: 1 step, then resumed to 2. The state is fp32 over a bf16
    base, checkpointing is on (shape:1 is larger than pocket), and the 2nd step at lr 1e-5 moves ≥ 99 % of lora_A.
    The cache entries are synthetic at the real widths (the real encoders' pass is tested on tiny: encoding with
    shape:1's 1.2B VAE and 1B-row Gemma embedding takes minutes and 8 GB on CPU), the text 128 tokens long."""
    from tests.shapes import fill_synthetic_cache

    data = dataset / "ds"
    assert _invoke("prepare", "canny", dataset / "videos", "--out", data, "--bucket", "64x64x9").exit_code == 0
    fill_synthetic_cache(data, "shape:1", text_tokens=128)

    run = dataset / "run"
    common = ("canny", "--data", data, "--out", run, "--model", "shape:1", "--dtype", "bf16", "--rank", "4",
              "--lr", "1e-5", "--save-every", "1")
    assert _train_cli(*common, "--steps", "1")["steps"] == 1
    one = _state(run)
    assert _train_cli(*common, "--steps", "2")["resumed_from"] == 1
    two = _state(run)
    meta = json.loads((run / "state" / "state.json").read_text())
    assert meta["base_dtype"] == "torch.bfloat16" and meta["gradient_checkpointing"] is True
    saved = [k for k in two if k.split(".")[0] in ("lora", "exp_avg", "exp_avg_sq")]
    assert saved and all(two[k].dtype == torch.float32 for k in saved)
    assert _changed(one, two, "lora_A") >= 0.99
