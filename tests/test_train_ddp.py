"""Several ranks on CPU: two real gloo ranks under torchrun (1 thread each), DDP and FSDP2.

The claim each test checks: 2 ranks at batch 1 train the LoRA that 1 rank trains at batch 2 (σ and noise are keyed
by the sample's slot in the global batch, not by the rank), each rank reading only its own samples; an FSDP run
killed after a save resumes to exactly the uninterrupted run; FSDP really shards (each rank holds about half the
transformer-block parameters, the LoRA included)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from avctl.cli import app
from avctl.modalities.base import get_modality
from avctl.train import TrainConfig, train
from tests.conftest import write_synthetic_clip

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "AVCTL_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
       "PYTHONPATH": str(ROOT)}


def torchrun(*args: str | Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *map(str, args)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def state(run: Path) -> dict[str, torch.Tensor]:
    """The fp32 resume state (LoRA weights and AdamW moments), without the generator."""
    tensors = load_file(str(next((run / "state").glob("state_*.safetensors"))))
    return {k: v for k, v in tensors.items() if k != "generator"}


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def rows(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def worker(tmp_path: Path, spec: dict) -> list[dict]:
    """tests/dist_worker.py on 2 ranks; each rank's report."""
    spec = {**spec, "report": str(tmp_path / "report")}
    (tmp_path / "spec.json").write_text(json.dumps(spec, default=str))
    torchrun(ROOT / "tests" / "dist_worker.py", tmp_path / "spec.json")
    return [json.loads((tmp_path / "report" / f"rank{r}.json").read_text()) for r in (0, 1)]


def test_ddp_and_fsdp_on_two_ranks_train_the_lora_of_one_rank_at_batch_2(tmp_path):
    """`torchrun ... avctl train` on tiny, 4 steps: DDP and FSDP at batch 1 per rank, and FSDP through `accelerate
    launch --config_file configs/accelerate/fsdp.yaml`, against one process at batch 2.
    The DDP run starts on an empty cache: rank 0 encodes it while rank 1 polls the files (no collective)."""
    for i in range(4):
        write_synthetic_clip(tmp_path / "videos" / f"c{i}.mp4", frames=9, width=64, height=64, fps=24.0, seed=i)
    data = tmp_path / "data"
    r = CliRunner().invoke(app, ["prepare", "canny", str(tmp_path / "videos"), "--out", str(data),
                                 "--bucket", "64x64x9", "--json"])
    assert r.exit_code == 0, r.output
    common = ["canny", "--data", data, "--model", "tiny", "--steps", "4", "--rank", "4", "--lr", "1e-3",
              "--save-every", "4"]
    for strategy in ("ddp", "fsdp"):
        torchrun("-m", "avctl.cli", "train", *common, "--out", tmp_path / strategy, "--strategy", strategy)
    # The shipped accelerate config launches the same FSDP run (on CPU accelerate starts gloo ranks; avctl reads
    # ACCELERATE_USE_FSDP and shards with FSDP2 itself).
    acc = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                          str(ROOT / "configs" / "accelerate" / "fsdp.yaml"), "--num_processes", "2", "-m",
                          "avctl.cli", "train", *map(str, common), "--out", str(tmp_path / "accelerate")],
                         capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=600)
    assert acc.returncode == 0, acc.stderr[-3000:]
    one = subprocess.run([sys.executable, "-m", "avctl.cli", "train", *map(str, common), "--out",
                          str(tmp_path / "one"), "--batch-size", "2"], capture_output=True, text=True, env=ENV,
                         cwd=ROOT, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]

    reference = state(tmp_path / "one")
    assert any(float(v.abs().max()) > 0 for k, v in reference.items() if "lora_B" in k)  # the LoRA moved
    one_rows = rows(tmp_path / "one")
    assert all(r["world_size"] == 1 for r in one_rows)
    for strategy, run in (("ddp", tmp_path / "ddp"), ("fsdp", tmp_path / "fsdp"), ("fsdp", tmp_path / "accelerate")):
        assert max_diff(state(run), reference) <= 1e-5, run
        got = rows(run)
        assert [r["step"] for r in got] == [1, 2, 3, 4]  # one writer: each step logged once
        assert all(r["world_size"] == 2 and r["strategy"] == strategy for r in got)
        for r, ref in zip(got, one_rows, strict=True):
            rank0, rank1 = r["samples"]
            assert len(rank0) == len(rank1) == 1 and not set(rank0) & set(rank1)  # disjoint samples per rank
            assert rank0 + rank1 == ref["samples"][0]  # the same global batch, split in slot order
        assert sorted(p.name for p in run.iterdir() if p.suffix == ".safetensors") == ["lora.safetensors"]
        assert json.loads((run / "state" / "state.json").read_text())["world_size"] == 2


def test_fsdp_run_killed_after_a_save_resumes_to_the_uninterrupted_run(tmp_path):
    """Tiny, FSDP on 2 ranks, 8 steps saving every 4: abandoned after step 6 (steps 5-6 lost) and resumed, it ends
    with exactly the uninterrupted run's LoRA and AdamW state. A state saved by 2 ranks resumes on 1, with a
    warning."""
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    worker(tmp_path, {"model": "tiny", "strategy": "fsdp", "samples": "tiny", "n": 5, "runs": [
        {"out": a, "steps": 8, "save_every": 4},
        {"out": b, "steps": 8, "save_every": 4, "stop_after": 6},
        {"out": b, "steps": 8, "save_every": 4},
        {"out": c, "steps": 4, "save_every": 4},
        *({"out": tmp_path / f"accum_{s}", "steps": 2, "strategy": s, "config": {"grad_accum": 2}}
          for s in ("ddp", "fsdp")),
        *({"out": tmp_path / f"unused_{s}", "steps": 2, "strategy": s, "config": {"targets": ["V.SA", "A.FF"]}}
          for s in ("ddp", "fsdp")),
    ]})
    assert json.loads((b / "state" / "state.json").read_text())["strategy"] == "fsdp"
    assert [r["step"] for r in rows(b)] == list(range(1, 9))
    sa, sb = state(a), state(b)
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    la, lb = load_file(str(a / "lora.safetensors")), load_file(str(b / "lora.safetensors"))
    assert all(torch.equal(la[k], lb[k]) for k in la)

    from tests.test_train import make_samples
    from tests.tiny import fresh_transformer

    torch.set_num_threads(1)  # the state records the ranks' thread count
    kw = {"modality": "canny", "rank": 4, "lr": 1e-3, "lr_end": 1e-4}
    with pytest.warns(UserWarning, match="no longer bit-identical"):
        more = train(TrainConfig(out=c, steps=6, save_every=4, **kw), get_modality("canny"), make_samples(5),
                     fresh_transformer(), {})
    assert more.resumed_from == 4 and more.steps == 6

    # Gradient accumulation (DDP's no_sync, FSDP's deferred reduce-scatter): 2 ranks × batch 1 × 2 micro-steps
    # train what 1 rank at batch 4 trains — over 5 samples, so step 2 crosses an epoch boundary mid-batch.
    four = train(TrainConfig(out=tmp_path / "four", steps=2, save_every=2, batch_size=4, **kw),
                 get_modality("canny"), make_samples(5), fresh_transformer(), {})
    for s in ("ddp", "fsdp"):
        assert max_diff(state(tmp_path / f"accum_{s}"), state(four.out)) <= 1e-5, s
        for got, ref in zip(rows(tmp_path / f"accum_{s}"), rows(four.out), strict=True):
            assert got["samples"] == [ref["samples"][0][0::2], ref["samples"][0][1::2]]  # slots 0, 2 | 1, 3

    # LoRA modules that never reach the loss (the last block's audio feed-forward on a video loss) have no gradient:
    # neither DDP nor FSDP waits for one.
    two = train(TrainConfig(out=tmp_path / "two", steps=2, save_every=2, batch_size=2, targets=["V.SA", "A.FF"], **kw),
                get_modality("canny"), make_samples(5), fresh_transformer(), {})
    for s in ("ddp", "fsdp"):
        assert max_diff(state(tmp_path / f"unused_{s}"), state(two.out)) <= 1e-5, s


def _shape1_cache(folder: Path, n: int) -> None:
    """Synthetic cache entries at shape:1's real widths (as tests/test_train_memory.py builds them), 128 text
    tokens."""
    from avctl.backbone import load_backbone
    from avctl.cache import to_stored

    c = load_backbone("shape:1", device="cpu", components=set()).configs
    g = torch.Generator().manual_seed(0)
    width, latent, audio = c["connectors"]["caption_channels"], c["vae"]["latent_channels"], c["audio_vae"]
    folder.mkdir(parents=True)
    for i in range(n):
        tensors = {"video": torch.randn(latent, 2, 2, 2, generator=g), "reference": torch.randn(latent, 2, 1, 1),
                   "audio": torch.randn(audio["latent_channels"], 8, audio["mel_bins"] // 4, generator=g),
                   "text_video": torch.randn(128, width, generator=g), "text_audio": torch.randn(128, width),
                   "text_mask": torch.ones(128), "fps": torch.tensor(24.0)}
        save_file(to_stored(tensors), str(folder / f"s{i}.safetensors"))


def test_fsdp_shards_shape_1_and_resumes_it_exactly(tmp_path):
    """shape:1 (LTX-2's real widths, one block) in bf16 under FSDP on 2 ranks, over synthetic cache files, as
    `avctl train` runs it: rank 0 alone loads the weights, rank 1 builds the model on `meta` and receives its
    shards. Each rank holds about half the transformer-block parameters (base and LoRA), and a run abandoned after
    its step-1 save and resumed ends exactly where the uninterrupted 2-step run ends."""
    _shape1_cache(tmp_path / "cache", 4)
    a, b = tmp_path / "a", tmp_path / "b"
    reports = worker(tmp_path, {"model": "shape:1", "dtype": "bf16", "strategy": "fsdp", "from_rank0": True,
                                "samples": tmp_path / "cache", "runs": [
                                    {"out": a, "steps": 2, "save_every": 1},
                                    {"out": b, "steps": 2, "save_every": 1, "stop_after": 1},
                                    {"out": b, "steps": 2, "save_every": 1},
                                ]})
    for i, run in enumerate(reports[0]["runs"]):
        held = [r["runs"][i]["held"] for r in reports]
        assert sum(held) == run["whole"]  # the shards partition the blocks
        assert all(abs(h / run["whole"] - 0.5) < 0.01 for h in held), held
    # Each rank's loader read only its own samples: the uninterrupted run's 2 steps × 2 ranks × batch 1 read each
    # of the 4 cache files once, on one rank.
    read0, read1 = (r["runs"][0]["read"] for r in reports)
    assert len(read0) == len(read1) == 2 and sorted(read0 + read1) == [0, 1, 2, 3]
    print("peak RSS per rank (GiB):", [round(r["max_rss_gib"], 2) for r in reports])
    meta = json.loads((b / "state" / "state.json").read_text())
    assert meta["strategy"] == "fsdp" and meta["base_dtype"] == "torch.bfloat16"
    sa, sb = state(a), state(b)
    assert all(v.dtype == torch.float32 for v in sa.values())
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    shutil.rmtree(tmp_path / "cache")


def test_what_fsdp_cannot_run_is_refused_before_loading(monkeypatch):
    from avctl.errors import BadUsage
    from avctl.train import check_strategy

    for bad in ({"validate_every": 2}, {"optimizer": "adamw8bit"}, {"quantize": "int8"}):
        with pytest.raises(BadUsage, match=r"--strategy"):
            check_strategy(TrainConfig(modality="canny", strategy="fsdp", **bad), 2)
        check_strategy(TrainConfig(modality="canny", strategy="fsdp", **bad), 1)  # one rank: nothing is sharded
        check_strategy(TrainConfig(modality="canny", strategy="ddp", **bad), 2)
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # accelerate launch with configs/accelerate/fsdp.yaml
    with pytest.raises(BadUsage, match="validate-every"):
        check_strategy(TrainConfig(modality="canny", validate_every=2), 2)
