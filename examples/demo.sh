#!/usr/bin/env bash
# The main job on the built-in `pocket` model (the same LTX-2 classes, CPU-sized, pretrained on the procedural
# world): world clips → prepare canny → train a canny LoRA → generate 4 held-out clips at strength 0 / 0.5 / 1 →
# eval (edge F1 per strength, contact sheet) → bench. Minutes on 2 CPU cores.
set -euo pipefail
export HF_HUB_OFFLINE=1
DEMO=${DEMO_DIR:-demo}
STEPS=${DEMO_TRAIN_STEPS:-300}
MODEL=${DEMO_MODEL:-pocket}
HELDOUT=${DEMO_HELDOUT:-4}
SECONDS=0

python examples/make_world.py "$DEMO/videos" --count 32 --seed 1
# Held out: 4 clips of another seed, fixed before any result was seen; the sheet shows all of them.
python examples/make_world.py "$DEMO/heldout" --count "$HELDOUT" --seed 2
# 3-px edge lines: at 64 px, 1-px Canny lines do not survive pocket's VAE and the LoRA needs ~4x the steps.
avctl prepare canny "$DEMO/videos" --out "$DEMO/datasets/canny" --bucket 64x64x17 --line-width 3
# One torch thread: on this kind of 2-core machine a second thread makes the step slower, not faster.
OMP_NUM_THREADS=1 avctl train canny --data "$DEMO/datasets/canny" --out "$DEMO/runs/canny" --model "$MODEL" \
  --steps "$STEPS" --batch-size 4 --rank 32 --lr 3e-3 --save-every 100
mkdir -p "$DEMO/outputs"
# One generate call (the model loads once): every held-out clip at strength 0, 0.5 and 1, its control drawn from
# the clip by --from-video as the LoRA's dataset was prepared (3-px lines). Clip k gets noise seed 42 + k (the same
# at its three strengths), so the sheet shows four noises, not one. Names sort clip by clip, then strength.
python - "$DEMO/heldout" "$DEMO/outputs" <<'PY'
import json, sys
from pathlib import Path
heldout, outputs = Path(sys.argv[1]), Path(sys.argv[2])
with open(outputs / "jobs.jsonl", "w") as f:
    for k, clip in enumerate(sorted(heldout.glob("*.mp4"))):
        prompt = clip.with_suffix(".txt").read_text().splitlines()[0]
        for strength in (0.0, 0.5, 1.0):
            out = outputs / f"{clip.stem}_s{round(strength * 100):03d}.mp4"
            row = {"from_video": str(clip), "prompt": prompt, "strength": strength, "seed": 42 + k, "out": str(out)}
            f.write(json.dumps(row) + "\n")
PY
avctl generate --model "$MODEL" --lora "$DEMO/runs/canny/lora.safetensors" --width 64 --height 64 --frames 17 \
  --batch "$DEMO/outputs/jobs.jsonl" --overwrite
avctl eval --runs "$DEMO/outputs" --sheet "$DEMO/outputs/sheet.png" --json > "$DEMO/outputs/eval.json"
python - "$DEMO/outputs/eval.json" <<'PY'
import json, sys
from collections import defaultdict
rows = [r for r in json.load(open(sys.argv[1])) if "metrics" in r]
by_strength = defaultdict(list)
for r in rows:
    by_strength[r["strength"]].append(r["metrics"])
print(f"edge F1 of the outputs, mean over {len(rows) // max(1, len(by_strength))} held-out clips (higher = follows "
      "the control; pocket alone, no LoRA, scores about 0.13):")
print("  strength  vs its 3-px control  vs the clip's plain 1-px Canny edges  per clip (plain)")
for strength, ms in sorted(by_strength.items()):
    mean = lambda k: sum(m[k] for m in ms) / len(ms)  # noqa: E731
    clips = " ".join(f"{m['edge_f1_plain']:.2f}" for m in ms)
    print(f"  {strength:<8}  {mean('edge_f1'):<19.3f}  {mean('edge_f1_plain'):<36.3f}  {clips}")
PY
avctl bench --model tiny --steps 3 --warmup 1 --json --plot "$DEMO/outputs/bench.png" > "$DEMO/outputs/bench.json"

echo
echo "Outputs (made in ${SECONDS} s):"
echo "  clips:       $DEMO/videos/ (held out: $DEMO/heldout/)"
echo "  dataset:     $DEMO/datasets/canny/dataset.jsonl (controls in $DEMO/datasets/canny/reference/)"
echo "  LoRA:        $DEMO/runs/canny/lora.safetensors (metrics: $DEMO/runs/canny/metrics.jsonl)"
echo "  generations: $DEMO/outputs/world_*_s{000,050,100}.mp4 (strength 0, 0.5, 1; + .json sidecars and controls)"
echo "  eval:        $DEMO/outputs/eval.json, contact sheet $DEMO/outputs/sheet.png"
echo "  bench:       $DEMO/outputs/bench.json, plot $DEMO/outputs/bench.png"
