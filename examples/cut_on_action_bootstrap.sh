#!/usr/bin/env bash
# Cut-on-action bootstrapping (AVControl paper §7) as a sequence of avctl commands.
#
#   1. Train on real multi-camera pairs (e.g. MultiCamVideo): reference = one camera, target = another.
#   2. For each viewpoint change in YAWS (growing, up to 135°): the current LoRA generates the cut for source clips,
#      asked for by the prompt ("cut to a view about N° around the subject"); every generation that succeeded becomes a
#      new (source → generated) pair in a growing manifest; the dataset is topped up (`prepare` keeps finished rows)
#      and training continues from the last state to a higher step target.
#
# Generated pairs are not checked automatically: look at the contact sheets (--preview) and delete the rows you do not
# want from $GROWN before the next `prepare` (the paper does not describe its filter; neither does avctl guess one).
# Continuing a run with a higher --steps stretches its learning-rate decay to the new target from where it is.
#
# Usage:  PAIRS=data/multicam/pairs.jsonl examples/cut_on_action_bootstrap.sh
# Try it end to end on the random-init test model (noise-like output; checks the chain, not quality):
#   PAIRS=... MODEL=tiny BUCKET=64x64x9 BASE_STEPS=4 ROUND_STEPS=2 GEN_STEPS=2 YAWS="45 90" PER_ROUND=2 \
#     examples/cut_on_action_bootstrap.sh
set -euo pipefail
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}

PAIRS=${PAIRS:?"set PAIRS to a pairs manifest (.jsonl lines with source, target, caption) of two cameras"}
MODEL=${MODEL:-${AVCTL_MODEL:-Lightricks/LTX-2}}
DATA=${DATA:-datasets/cut-on-action}
RUN=${RUN:-runs/cut-on-action}
BUCKET=${BUCKET:-}             # WxHxF for prepare; empty = the model's usual size
BASE_STEPS=${BASE_STEPS:-10000}  # step target of the first training on real pairs
ROUND_STEPS=${ROUND_STEPS:-1700} # steps added per bootstrapping round (3 rounds → 15,100 in all, the paper's ~15K)
YAWS=${YAWS:-"45 90 135"}      # viewpoint change asked for in each round, degrees
PER_ROUND=${PER_ROUND:-200}    # source clips generated from per round
GEN_STEPS=${GEN_STEPS:-30}     # denoising steps per generation
AVCTL=${AVCTL:-avctl}

root=$(cd "$(dirname "$PAIRS")" && pwd)
GROWN=${GROWN:-$root/pairs.bootstrap.jsonl}  # the original pairs plus every generated one; next to $PAIRS so
                                           # its relative paths stay valid
[ -f "$GROWN" ] || cp "$PAIRS" "$GROWN"
bucket=()
[ -n "$BUCKET" ] && bucket=(--bucket "$BUCKET")

# 1. real multi-camera pairs
"$AVCTL" prepare cut-on-action "$GROWN" --out "$DATA" --model "$MODEL" "${bucket[@]}"
"$AVCTL" train cut-on-action --data "$DATA" --out "$RUN" --model "$MODEL" --steps "$BASE_STEPS"
steps=$BASE_STEPS

for yaw in $YAWS; do
  round="bootstrap/yaw-$yaw"
  mkdir -p "$root/$round"
  # 2a. one generation per source clip of the original manifest, alternating left/right, in one model load
  python3 - "$PAIRS" "$root" "$round" "$yaw" "$PER_ROUND" "$RUN/lora.safetensors" > "$root/$round/batch.jsonl" <<'PY'
import json, os, sys
pairs, root, round_dir, yaw, limit, lora = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
rows = [json.loads(line) for line in open(pairs, encoding="utf-8") if line.strip()]
for i, row in enumerate(rows[:limit]):
    side = "left" if i % 2 == 0 else "right"
    caption = (row.get("caption") or "").strip()
    prompt = (f"{caption.rstrip('.')}. " if caption else "") + (
        f"Cut to another camera about {yaw} degrees to the {side} around the subject; the same action continues.")
    name = os.path.splitext(os.path.basename(row["source"]))[0]
    print(json.dumps({"prompt": prompt, "lora": lora, "control": os.path.join(root, row["source"]),
                      "out": os.path.join(root, round_dir, f"{i:05d}-{name}.mp4")}))
PY
  # a failed row is reported and the rest go on (exit 1): only the pairs that exist are added below
  "$AVCTL" generate --batch "$root/$round/batch.jsonl" --model "$MODEL" --steps "$GEN_STEPS" --preview \
    || echo "some generations of round yaw=$yaw failed; their pairs are left out"
  # 2b. add (source → generated) pairs, paths relative to the manifest, caption = the prompt that made them
  python3 - "$root/$round/batch.jsonl" "$root" "$GROWN" <<'PY'
import json, os, sys
batch, root, grown = sys.argv[1], sys.argv[2], sys.argv[3]
known = {json.loads(line)["target"] for line in open(grown, encoding="utf-8") if line.strip()}
with open(grown, "a", encoding="utf-8") as out:
    for line in open(batch, encoding="utf-8"):
        row = json.loads(line)
        target = os.path.relpath(row["out"], root)
        if os.path.isfile(row["out"]) and target not in known:
            out.write(json.dumps({"source": os.path.relpath(row["control"], root), "target": target,
                                  "caption": row["prompt"]}) + "\n")
PY
  # 2c. top up the dataset and continue training from the last state
  "$AVCTL" prepare cut-on-action "$GROWN" --out "$DATA" --model "$MODEL" "${bucket[@]}"
  steps=$((steps + ROUND_STEPS))
  "$AVCTL" train cut-on-action --data "$DATA" --out "$RUN" --model "$MODEL" --steps "$steps"
done
echo "LoRA: $RUN/lora.safetensors ($steps steps); pairs: $GROWN; generated clips: $root/bootstrap/"
