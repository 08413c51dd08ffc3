#!/usr/bin/env bash
# The main job on the built-in `pocket` model (the same LTX-2 classes, CPU-sized, pretrained on the procedural
# world): world clips → prepare canny → train a canny LoRA → generate a held-out clip at strength 0 / 0.5 / 1 →
# eval (edge F1 per strength, contact sheet) → bench. Minutes on 2 CPU cores.
set -euo pipefail
export HF_HUB_OFFLINE=1
DEMO=${DEMO_DIR:-demo}
STEPS=${DEMO_TRAIN_STEPS:-250}
MODEL=${DEMO_MODEL:-pocket}
SECONDS=0

python examples/make_world.py "$DEMO/videos" --count 24 --seed 1
python examples/make_world.py "$DEMO/heldout" --count 1 --seed 2
avctl modalities
avctl prepare canny "$DEMO/videos" --out "$DEMO/datasets/canny" --bucket 64x64x17
avctl prepare canny "$DEMO/heldout" --out "$DEMO/datasets/heldout" --bucket 64x64x17
avctl train canny --data "$DEMO/datasets/canny" --out "$DEMO/runs/canny" --model "$MODEL" --steps "$STEPS" \
  --rank 32 --lr 3e-3 --save-every 50
CONTROL=$(ls "$DEMO"/datasets/heldout/reference/*.mp4 | head -n 1)
PROMPT=$(head -n 1 "$DEMO"/heldout/world_0000.txt)
mkdir -p "$DEMO/outputs"
for STRENGTH in 0 0.5 1; do  # file names sort in strength order: canny_s000, canny_s050, canny_s100
  NAME=$(printf 'canny_s%03d' "$(python -c "print(round($STRENGTH * 100))")")
  avctl generate --model "$MODEL" --prompt "$PROMPT" --lora "$DEMO/runs/canny/lora.safetensors" \
    --control "$CONTROL" --strength "$STRENGTH" --width 64 --height 64 --frames 17 \
    --out "$DEMO/outputs/$NAME.mp4" --overwrite
done
avctl eval --runs "$DEMO/outputs" --sheet "$DEMO/outputs/sheet.png" --json > "$DEMO/outputs/eval.json"
python - "$DEMO/outputs/eval.json" <<'PY'
import json, sys
rows = json.load(open(sys.argv[1]))
print("edge F1 of the output against the held-out control (higher = follows the control):")
for r in rows:
    if "metrics" in r:
        print(f"  strength {r['strength']}: {r['metrics']['edge_f1']:.3f}")
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
