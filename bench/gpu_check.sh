#!/usr/bin/env bash
# One prepared GPU check: the trainer on Llama-shaped random-weight models of realistic size,
# measured peak reserved VRAM against the operator's estimate for the same FineTuneJob spec.
#   bash bench/gpu_check.sh            # on a CUDA machine with this repo and .venv (< 8 min on an H100)
#   bash bench/gpu_check.sh --tiny     # the same pipeline with the tiny model (a CPU smoke test)
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 PYTHONWARNINGS=ignore
WORK="${FTO_BENCH_DIR:-${TMPDIR:-/tmp}/fto-gpu-check}"
OUT="${OUT:-$WORK}"
mkdir -p "$WORK" "$OUT"
STEPS=8
# model  seq  micro-batch   (QLoRA NF4 + double quant, r=16 on q_proj,v_proj, activation checkpointing)
CONFIGS=(
  "meta-llama/Llama-3.2-1B 512 1"
  "meta-llama/Llama-3.2-1B 2048 4"
  "meta-llama/Llama-3.2-3B 512 4"
  "meta-llama/Llama-3.2-3B 2048 1"
)
if [ "${1:-}" = "--tiny" ]; then
  STEPS=2
  CONFIGS=("tiny 64 1" "tiny 128 4")
fi
"$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")'
RESULTS="$OUT/gpu_check.jsonl"
: > "$RESULTS"
for c in "${CONFIGS[@]}"; do
  read -r model seq mb <<<"$c"
  echo "== $model seq $seq micro-batch $mb" >&2
  start=$(date +%s)
  if "$PY" bench/trainer_bench.py --json --steps "$STEPS" --model-config "$model" --seq-len "$seq" --micro-batch "$mb" \
      --r 16 --targets q_proj,v_proj --workdir "$WORK" >> "$RESULTS" 2> "$OUT/last_error.log"; then
    echo "   done in $(( $(date +%s) - start ))s" >&2
  else
    echo "   FAILED after $(( $(date +%s) - start ))s:" >&2; tail -20 "$OUT/last_error.log" >&2
    printf '{"model": "%s", "seqLen": %s, "microBatch": %s, "failed": true}\n' "$model" "$seq" "$mb" >> "$RESULTS"
  fi
done
"$PY" - "$RESULTS" <<'PYEOF'
import json, sys
G = 2**30
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
print(f"{'model':26s} {'seq':>5s} {'mb':>3s} {'s/step':>7s} {'tok/s':>8s} {'reserved':>9s} {'dev used':>9s} {'est peak':>9s} {'est+margin':>10s} {'est/meas':>8s}")
for r in rows:
    if r.get("failed"):
        print(f"{r['model']:26s} {r['seqLen']:5d} {r['microBatch']:3d}  FAILED"); continue
    res, used = r.get("maxMemoryReservedBytes"), r.get("deviceMemoryUsedBytes")
    f = lambda b: f"{b / G:8.2f}G" if b else "       -"
    ratio = f"{r['estimatePeakBytes'] / res:8.3f}" if res else "       -"
    print(f"{r['model']:26s} {r['seqLen']:5d} {r['microBatch']:3d} {r['stepSeconds']:7.3f} {r['tokensPerSecond'] or 0:8.0f} "
          f"{f(res)} {f(used)} {f(r['estimatePeakBytes'])} {f(r['estimateTotalBytes']):>10s} {ratio}")
PYEOF
