#!/usr/bin/env bash
# The main job on the built-in `pocket` model (the same LTX-2 classes, CPU-sized, pretrained on the procedural
# world): world clips → prepare canny → train a canny LoRA → generate 4 held-out clips at strength 0 / 0.5 / 1 →
# eval (edge F1 per strength, contact sheet) → bench. Minutes on 2 CPU cores.
#
# pocket's commands run on one torch thread (a second one makes its small steps slower on this kind of machine),
# so the script keeps the second core busy with independent work: bench beside training, two generate processes.
set -euo pipefail
export HF_HUB_OFFLINE=1
DEMO=${DEMO_DIR:-demo}
STEPS=${DEMO_TRAIN_STEPS:-240}
MODEL=${DEMO_MODEL:-pocket}
HELDOUT=${DEMO_HELDOUT:-4}
SECONDS=0
mkdir -p "$DEMO/outputs"
phase() { echo "── ${SECONDS} s: $*"; }

phase "world clips"

# Held out: clips of another seed, fixed before any result was seen; the sheet shows all of them. The 32 training
# clips are written in two halves, one per core (clip k is the same whichever process writes it); the held-out
# ones follow on the second core while the first prepares.
python examples/make_world.py "$DEMO/videos" --count 16 --start 16 --seed 1 &
SECOND_HALF=$!
python examples/make_world.py "$DEMO/videos" --count 16 --seed 1
wait "$SECOND_HALF"
python examples/make_world.py "$DEMO/heldout" --count "$HELDOUT" --seed 2 &
HELD=$!
# 3-px edge lines: at 64 px, 1-px Canny lines barely survive pocket's VAE and a LoRA learns more slowly from them.
phase "prepare"
avctl prepare canny "$DEMO/videos" --out "$DEMO/datasets/canny" --bucket 64x64x17 --line-width 3 --workers 2
wait "$HELD"

# bench (the tiny model's step per reference size and strength, ratios from one run) on the second core while the
# LoRA trains on the first; its absolute times are those of a busy machine.
phase "train (bench beside it)"
avctl bench --model tiny --steps 3 --warmup 1 --json --plot "$DEMO/outputs/bench.png" > "$DEMO/outputs/bench.json" &
BENCH=$!
OMP_NUM_THREADS=1 avctl train canny --data "$DEMO/datasets/canny" --out "$DEMO/runs/canny" --model "$MODEL" \
  --steps "$STEPS" --batch-size 4 --rank 32 --lr 3e-3 --save-every 100
wait "$BENCH"
phase "generate"

# Every held-out clip at strength 0, 0.5 and 1, its control drawn from the clip by --from-video as the LoRA's
# dataset was prepared (3-px lines). Clip k gets noise seed 42 + k (the same at its three strengths), so the sheet
# shows four noises, not one. Two batch files, one generate process per core; names sort clip by clip, then strength.
python - "$DEMO/heldout" "$DEMO/outputs" <<'PY'
import json, sys
from pathlib import Path
heldout, outputs = Path(sys.argv[1]), Path(sys.argv[2])
clips = sorted(heldout.glob("*.mp4"))
for part in (0, 1):
    with open(outputs / f"jobs-{part + 1}.jsonl", "w") as f:
        for k, clip in enumerate(clips):
            if k % 2 != part:
                continue
            prompt = clip.with_suffix(".txt").read_text().splitlines()[0]
            for strength in (0.0, 0.5, 1.0):
                out = outputs / f"{clip.stem}_s{round(strength * 100):03d}.mp4"
                row = {"from_video": str(clip), "prompt": prompt, "strength": strength, "seed": 42 + k, "out": str(out)}
                f.write(json.dumps(row) + "\n")
PY
# 20 denoising steps, as the claims table (examples/pocket_claims.py) samples: a third less time than the default 30.
# --preset plain (one model pass per step, no guidance: the paper's CFG 1) as the claims were measured; --preset ltx2
# (LTX2Pipeline's guidance) costs four passes per step and would push the demo past 15 minutes (docs/sampler.md).
generate() {
  avctl generate --model "$MODEL" --lora "$DEMO/runs/canny/lora.safetensors" --width 64 --height 64 --frames 17 \
    --steps 20 --preset plain --batch "$1" --overwrite
}
SECOND=
if [ -s "$DEMO/outputs/jobs-2.jsonl" ]; then  # empty with DEMO_HELDOUT=1
  generate "$DEMO/outputs/jobs-2.jsonl" &
  SECOND=$!
fi
generate "$DEMO/outputs/jobs-1.jsonl"
[ -z "$SECOND" ] || wait "$SECOND"
phase "eval"

avctl eval --runs "$DEMO/outputs" --sheet "$DEMO/outputs/sheet.png" --json > "$DEMO/outputs/eval.json"
python - "$DEMO/outputs/eval.json" <<'PY'
import json, sys
from collections import defaultdict
rows = [r for r in json.load(open(sys.argv[1])) if "metrics" in r]
by_strength = defaultdict(list)
for r in rows:
    by_strength[r["strength"]].append(r["metrics"])
clips = len(rows) // max(1, len(by_strength))
print(f"edge F1 of the outputs, mean over {clips} held-out clips (higher = follows the control), and its skill")
print("(0 = what the other clips' controls explain, 1 = perfect; docs/eval.md):")
print("  strength  vs its 3-px control  vs the clip's plain 1-px edges  skill (plain)  each clip (plain)")
for strength, ms in sorted(by_strength.items()):
    thick = sum(m["edge_f1"] for m in ms) / len(ms)
    plain = sum(m["edge_f1_plain"] for m in ms) / len(ms)
    skills = [m["edge_f1_plain_skill"] for m in ms if "edge_f1_plain_skill" in m]
    skill = f"{sum(skills) / len(skills):+.3f}" if skills else "n/a"
    each = " ".join(f"{m['edge_f1_plain']:.2f}" for m in ms)
    print(f"  {strength:<8}  {thick:<19.3f}  {plain:<30.3f}  {skill:<13}  {each}")
PY

echo
echo "Outputs (made in ${SECONDS} s):"
echo "  clips:       $DEMO/videos/ (held out: $DEMO/heldout/)"
echo "  dataset:     $DEMO/datasets/canny/dataset.jsonl (controls in $DEMO/datasets/canny/reference/)"
echo "  LoRA:        $DEMO/runs/canny/lora.safetensors (metrics: $DEMO/runs/canny/metrics.jsonl)"
echo "  generations: $DEMO/outputs/world_*_s{000,050,100}.mp4 (strength 0, 0.5, 1; + .json sidecars and controls)"
echo "  eval:        $DEMO/outputs/eval.json, contact sheet $DEMO/outputs/sheet.png"
echo "  bench:       $DEMO/outputs/bench.json, plot $DEMO/outputs/bench.png"
