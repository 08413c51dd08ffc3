"""Data-parallel training on CPU: two real ranks under torchrun (gloo)."""

import json
import os
import subprocess
import sys

from typer.testing import CliRunner

from avctl.cli import app
from tests.conftest import write_synthetic_clip


def test_two_rank_run_records_world_size_and_disjoint_samples(tmp_path):
    for i in range(4):
        write_synthetic_clip(tmp_path / "videos" / f"c{i}.mp4", frames=17, width=128, height=128, fps=24.0, seed=i)
    data, run = tmp_path / "data", tmp_path / "run"
    r = CliRunner().invoke(app, ["prepare", "canny", str(tmp_path / "videos"), "--out", str(data),
                                 "--bucket", "128x128x17", "--json"])
    assert r.exit_code == 0, r.output
    env = {**os.environ, "AVCTL_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "avctl.cli", "train", "canny", "--data", str(data), "--out", str(run), "--model", "tiny",
           "--steps", "3", "--rank", "4", "--save-every", "3"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]  # one writer: each step logged once
    assert all(r["world_size"] == 2 for r in rows)
    for r in rows:
        rank0, rank1 = r["samples"]
        assert len(rank0) == len(rank1) == 1 and not set(rank0) & set(rank1)
    assert (run / "lora.safetensors").is_file()
    assert sorted(p.name for p in run.iterdir() if p.suffix == ".safetensors") == ["lora.safetensors"]
