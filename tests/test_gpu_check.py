"""examples/gpu_check.sh runs end to end in its CPU smoke mode (shape:1, 128x128x9), so the real-scale GPU check is
known to work before a GPU sees it."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_check_smoke_mode_writes_every_phase_beside_the_plan(tmp_path):
    out = tmp_path / "smoke.json"
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "2",
           "AVCTL_NO_PROGRESS": "1"}
    done = subprocess.run(["bash", str(ROOT / "examples" / "gpu_check.sh"), "--smoke", str(out)], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    train, bench, decode = result["train"], result["bench"], result["decode"]
    assert train["model"] == "shape:1" and train["steps"] == 2 and train["plan_peak_gib"] > 0
    assert all(loss == loss for loss in train["losses"])  # finite
    settings = {(r["downscale"], r["strength"]) for r in bench["rows"] if r["path"] == "avctl"}
    assert {(1, 1.0), (2, 1.0), (4, 1.0), (1, 0.5), (2, 0.5), (4, 0.5)} <= settings
    assert all(r["predicted_ratio_vs_1x"] for r in bench["rows"] if r["downscale"])
    assert decode["frames"] == [1, 9, 128, 128, 3] and decode["plan_vae_gib"] > 0
    assert not list(tmp_path.glob("*.tmp"))
