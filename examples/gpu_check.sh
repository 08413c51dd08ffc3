#!/usr/bin/env bash
# The real-scale check on one GPU: canny LoRA training steps at 768x512x121 (2x reference) on the full-size LTX-2
# shape (`--model shape`: real configs, random weights), denoising step time per reference downscale and strength,
# and a tiled VAE decode; each peak beside `avctl plan`'s estimate. About 5 minutes on one H100.
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
"$PY" - "$WORK" "$OUT" <<'EOF'
import json, os, sys
work, out = sys.argv[1], sys.argv[2]
merged = {p: json.load(open(os.path.join(work, p + ".json"))) for p in ("train", "bench", "decode")}
tmp = out + ".tmp"
with open(tmp, "w") as f:
    json.dump(merged, f, indent=2)
os.replace(tmp, out)
t, d = merged["train"], merged["decode"]
print(f"{t['device']}: train {t['s_per_step']:.2f} s/step, peak {t['peak_gib']:.2f} GiB (plan {t['plan_peak_gib']:.2f}); "
      f"decode {d['seconds']:.1f} s, peak {d['peak_gib']:.2f} GiB (plan {d['plan_vae_gib']:.2f}); {out}")
EOF
