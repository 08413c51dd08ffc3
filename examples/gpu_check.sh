#!/usr/bin/env bash
# The real-scale check on one GPU: canny LoRA training steps at 768x512x121 (2x reference) on the full-size LTX-2
# shape (`--model shape`: real configs, random weights), denoising step time per reference downscale and strength,
# and a tiled VAE decode; each peak beside `avctl plan`'s estimate. About 5 minutes on one H100. Where 8 GPUs are
# visible, the train phase also runs on 8 FSDP ranks (torchrun --nproc_per_node 8).
#
#   examples/gpu_check.sh [--smoke] [OUT.json]
#
# --smoke runs the same phases on `shape:1` at 128x128x9 on a CPU (what CI runs). Each phase is its own process, so
# its peak memory is its own; the results are merged into OUT.json (default gpu_check.json).
set -euo pipefail
MODE=full
if [ "${1:-}" = "--smoke" ]; then MODE=smoke; shift; fi
OUT=${1:-gpu_check.json}
PY=${PYTHON:-python}
HERE=$(cd "$(dirname "$0")" && pwd)
export HF_HUB_OFFLINE=1
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

for phase in train bench decode; do
  echo "── gpu_check ($MODE): $phase" >&2
  "$PY" "$HERE/gpu_check.py" --mode "$MODE" --phase "$phase" --out "$WORK/$phase.json"
done
# 8 GPUs: the train phase on 8 ranks of one node under torchrun with FSDP (transformer blocks and their LoRA sharded
# over the GPUs); skipped with a message when fewer than 8 GPUs are visible (always in --smoke).
NGPU=$("$PY" -c 'import torch; print(torch.cuda.device_count())')
if [ "$MODE" = full ] && [ "$NGPU" -ge 8 ]; then
  echo "── gpu_check ($MODE): train on 8 GPUs, --strategy fsdp" >&2
  "$PY" -m torch.distributed.run --standalone --nproc_per_node 8 "$HERE/gpu_check.py" --mode "$MODE" \
    --phase train --strategy fsdp --out "$WORK/train_fsdp8.json"
else
  echo "── gpu_check ($MODE): 8-GPU FSDP section skipped: $NGPU GPU(s) visible, 8 needed (full mode)" >&2
fi
"$PY" - "$WORK" "$OUT" <<'EOF'
import json, os, sys
work, out = sys.argv[1], sys.argv[2]
phases = ["train", "bench", "decode"] + (["train_fsdp8"] if os.path.exists(os.path.join(work, "train_fsdp8.json")) else [])
merged = {p: json.load(open(os.path.join(work, p + ".json"))) for p in phases}
tmp = out + ".tmp"
with open(tmp, "w") as f:
    json.dump(merged, f, indent=2)
os.replace(tmp, out)
t, d = merged["train"], merged["decode"]
print(f"{t['device']}: train {t['s_per_step']:.2f} s/step, peak {t['peak_gib']:.2f} GiB (plan {t['plan_peak_gib']:.2f}); "
      f"decode {d['seconds']:.1f} s, peak {d['peak_gib']:.2f} GiB (plan {d['plan_vae_gib']:.2f}); {out}")
if "train_fsdp8" in merged:
    f8 = merged["train_fsdp8"]
    print(f"8 GPUs, fsdp: train {f8['s_per_step']:.2f} s/step, peak {f8['peak_gib_max']:.2f} GiB on the fullest GPU "
          f"(plan {f8['plan_peak_gib']:.2f})")
EOF
