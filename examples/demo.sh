#!/usr/bin/env bash
# The main job on the built-in `tiny` model (random weights, so the output is noise-like — this shows the chain
# runs end to end, not quality): synthetic clips → prepare canny → train → generate with strength 0.5 → eval → bench.
set -euo pipefail
export HF_HUB_OFFLINE=1
DEMO=${DEMO_DIR:-demo}
STEPS=${DEMO_TRAIN_STEPS:-30}

python examples/make_clips.py "$DEMO/videos" --count 4 --size 192x160 --frames 25
avctl modalities
avctl prepare canny "$DEMO/videos" --out "$DEMO/datasets/canny" --bucket 128x128x17 --model tiny
avctl train canny --data "$DEMO/datasets/canny" --out "$DEMO/runs/canny" --model tiny --steps "$STEPS" \
  --save-every 10
CONTROL=$(ls "$DEMO"/datasets/canny/reference/*.mp4 | head -n 1)
avctl generate --model tiny --prompt "a red circle and a blue square move over a striped background" \
  --lora "$DEMO/runs/canny/lora.safetensors" --control "$CONTROL" --strength 0.5 \
  --width 128 --height 128 --frames 17 --steps 8 --out "$DEMO/outputs/canny_strength0.5.mp4" --overwrite
avctl eval canny --control "$CONTROL" --video "$DEMO/outputs/canny_strength0.5.mp4" \
  --sheet "$DEMO/outputs/canny_strength0.5.sheet.png" --json > "$DEMO/outputs/eval.json"
avctl bench --model tiny --steps 3 --warmup 1 --json --plot "$DEMO/outputs/bench.png" > "$DEMO/outputs/bench.json"

echo
echo "Outputs:"
echo "  clips:      $DEMO/videos/"
echo "  dataset:    $DEMO/datasets/canny/dataset.jsonl (controls in $DEMO/datasets/canny/reference/)"
echo "  LoRA:       $DEMO/runs/canny/lora.safetensors (metrics: $DEMO/runs/canny/metrics.jsonl)"
echo "  generation: $DEMO/outputs/canny_strength0.5.mp4 (+ .json sidecar)"
echo "  eval:       $DEMO/outputs/eval.json, contact sheet $DEMO/outputs/canny_strength0.5.sheet.png"
echo "  bench:      $DEMO/outputs/bench.json, plot $DEMO/outputs/bench.png"
