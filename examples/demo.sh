#!/usr/bin/env bash
# The main job on the built-in `pocket` model (the same LTX-2 classes, CPU-sized, pretrained on the procedural
# world): world clips → prepare canny → train a canny LoRA → generate a held-out clip at strength 0 / 0.5 / 1 →
# eval (edge F1 per strength, contact sheet) → bench. Minutes on 2 CPU cores.
set -euo pipefail
export HF_HUB_OFFLINE=1
DEMO=${DEMO_DIR:-demo}
STEPS=${DEMO_TRAIN_STEPS:-300}
MODEL=${DEMO_MODEL:-pocket}
SECONDS=0

python examples/make_world.py "$DEMO/videos" --count 32 --seed 1
python examples/make_world.py "$DEMO/heldout" --count 1 --seed 2
avctl modalities
# 3-px edge lines: at 64 px, 1-px Canny lines do not survive pocket's VAE and the LoRA needs ~4x the steps.
avctl prepare canny "$DEMO/videos" --out "$DEMO/datasets/canny" --bucket 64x64x17 --line-width 3
avctl prepare canny "$DEMO/heldout" --out "$DEMO/datasets/heldout" --bucket 64x64x17 --line-width 3
# One torch thread: on this kind of 2-core machine a second thread makes the step slower, not faster.
OMP_NUM_THREADS=1 avctl train canny --data "$DEMO/datasets/canny" --out "$DEMO/runs/canny" --model "$MODEL" \
  --steps "$STEPS" --batch-size 4 --rank 32 --lr 3e-3 --save-every 100
CONTROL=$(ls "$DEMO"/datasets/heldout/reference/*.mp4 | head -n 1)
PROMPT=$(head -n 1 "$DEMO"/heldout/world_0000.txt)
mkdir -p "$DEMO/outputs"
# One generate call for the three strengths (the model loads once); names sort in strength order.
python - "$DEMO/outputs/jobs.jsonl" "$DEMO/outputs" <<'PY'
import json, sys
with open(sys.argv[1], "w") as f:
    for strength in (0.0, 0.5, 1.0):
        f.write(json.dumps({"strength": strength, "out": f"{sys.argv[2]}/canny_s{round(strength * 100):03d}.mp4"}) + "\n")
PY
avctl generate --model "$MODEL" --prompt "$PROMPT" --lora "$DEMO/runs/canny/lora.safetensors" \
  --control "$CONTROL" --width 64 --height 64 --frames 17 --batch "$DEMO/outputs/jobs.jsonl" --overwrite
avctl eval --runs "$DEMO/outputs" --sheet "$DEMO/outputs/sheet.png" --json > "$DEMO/outputs/eval.json"
python - "$DEMO/outputs/eval.json" "$DEMO"/heldout/world_0000.mp4 <<'PY'
import json, sys
from pathlib import Path
from avctl.media import fit_to_bucket, read_video
from avctl.metrics import edge_f1
from modalities.base import Clip
from modalities.canny import CannyExtractor
rows = json.load(open(sys.argv[1]))
clip = fit_to_bucket(read_video(Path(sys.argv[2]), max_frames=17).frames, 64, 64)
plain = CannyExtractor()(Clip(frames=clip, fps=24.0, key="heldout", seed=0, reference_size=(32, 32))).frames
print("edge F1 of the output (higher = follows the control; pocket alone, no LoRA, scores about 0.13):")
print("  strength  vs its 3-px control  vs the clip's plain 1-px Canny edges")
for r in sorted((r for r in rows if "metrics" in r), key=lambda r: r["strength"]):
    out = read_video(Path(r["video"])).frames
    print(f"  {r['strength']:<8}  {r['metrics']['edge_f1']:<19.3f}  {edge_f1(plain, out):.3f}")
PY
avctl bench --model tiny --steps 3 --warmup 1 --json --plot "$DEMO/outputs/bench.png" > "$DEMO/outputs/bench.json"

echo
echo "Outputs (made in ${SECONDS} s):"
echo "  clips:       $DEMO/videos/ (held out: $DEMO/heldout/)"
echo "  dataset:     $DEMO/datasets/canny/dataset.jsonl (controls in $DEMO/datasets/canny/reference/)"
echo "  LoRA:        $DEMO/runs/canny/lora.safetensors (metrics: $DEMO/runs/canny/metrics.jsonl)"
echo "  generations: $DEMO/outputs/canny_s{000,050,100}.mp4 (strength 0, 0.5, 1; + .json sidecars)"
echo "  eval:        $DEMO/outputs/eval.json, contact sheet $DEMO/outputs/sheet.png"
echo "  bench:       $DEMO/outputs/bench.json, plot $DEMO/outputs/bench.png"
