#!/usr/bin/env bash
# GPU benchmark, for a machine with a CUDA GPU; about 8 minutes in all (BENCH_BUDGET_S).
#
# Builds the tiny model and a random-weight model with Stable Diffusion 1.5's architecture
# (bench/sd15_random.py, no download), then runs `python -m bench` on CUDA:
#   1. SD 1.5 fp16, the bot's defaults (channels_last on): scenarios 1-3, the burst, and a
#      MAX_BATCH sweep 1,4,8 (full path vs the plain diffusers loop at each batch size)
#   2. the tiny model, same sweep: the bot's fixed per-job cost when images are nearly free
#   3. SD 1.5, the mixed workload (strengths 0.35-0.8, steps 20/30, two aspect ratios) at
#      512 px with iteration-level batching (BATCHING=step) at MAX_BATCH 1/4/8/16: image-steps
#      per second per batch size, without and then with COMPILE (row counts padded to
#      buckets, so a few compiled graphs serve every mix of jobs)
#   4. SD 1.5 variants, scenario 1 and 3 only: bf16; channels_last off; torch.compile
#      (the compile runs need about 5 more minutes each: BENCH_BUDGET_S≈1500 for all)
# Each run's report is printed as it ends, then a summary of their JSON lines. A step
# that would not fit in the time left is skipped and says so.
#
# Usage: bash bench/gpu.sh [WORK_DIR]   (env: PY, DEVICE=cuda, BENCH_BUDGET_S=470, and
# every BENCH_* / MAX_BATCH variable python -m bench reads)
set -uo pipefail
cd "$(dirname "$0")/.."

PY=${PY:-.venv/bin/python}
[[ -x $PY ]] || PY=python3
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
DEVICE=${DEVICE:-cuda}
WORK=${1:-$(mktemp -d -t img2img-gpu-bench-XXXXXX)}
mkdir -p "$WORK"
BUDGET=${BENCH_BUDGET_S:-470}
DEADLINE=$((SECONDS + BUDGET))
export BENCH_N=${BENCH_N:-8} BENCH_N_SMALL=${BENCH_N_SMALL:-16} BENCH_N_SWEEP=${BENCH_N_SWEEP:-16}
export BENCH_ROUNDS=${BENCH_ROUNDS:-2}
SWEEP=${GPU_SWEEP:-1,4,8}
MIXED_SWEEP=${GPU_MIXED_SWEEP:-1,4,8,16}
MIXED_N=${GPU_MIXED_N:-32}
SUMMARY="$WORK/summary.jsonl"
: >"$SUMMARY"

left() { echo $((DEADLINE - SECONDS)); }

# step NAME MIN_SECONDS CAP_SECONDS CMD...: run CMD for at most CAP seconds (and never past
# the deadline), if MIN_SECONDS still fit. An interrupted bench still prints what it has.
step() {
  local name=$1 need=$2 cap=$3
  shift 3
  if (($(left) < need)); then
    echo "## $name: skipped, $(left) s left (needs about $need s)"
    return 0
  fi
  local limit=$(($(left) < cap ? $(left) : cap))
  echo "## $name (limit $limit s, $(left) s left)"
  local started=$SECONDS rc=0
  timeout --signal=INT --kill-after=20 "$limit" "$@" || rc=$?
  echo "## $name: exit $rc after $((SECONDS - started)) s"
}

# bench NAME MIN_SECONDS CAP_SECONDS ARGS...: a python -m bench run; its JSON line goes to
# the summary.
bench() {
  local name=$1 need=$2 cap=$3
  shift 3
  step "$name" "$need" "$cap" bash -c \
    'set -o pipefail; "$0" -m bench --device "$1" --out "$2/$3" "${@:4}" | tee -i "$2/$3.txt"' \
    "$PY" "$DEVICE" "$WORK" "$name" "$@"
  if [[ -s $WORK/$name.txt ]] && tail -n 1 "$WORK/$name.txt" | grep -q '^{'; then
    tail -n 1 "$WORK/$name.txt" | sed "s/^{/{\"run\": \"$name\", /" >>"$SUMMARY"
  fi
}

echo "## GPU bench in $WORK, budget $BUDGET s"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
"$PY" - "$DEVICE" <<'PYCHECK' || exit 1
import sys
import torch
dev = sys.argv[1]
if dev == "cuda" and not torch.cuda.is_available():
    sys.exit("bench/gpu.sh: torch sees no CUDA GPU (set DEVICE=cpu for a dry run)")
name = torch.cuda.get_device_name() if dev == "cuda" else "cpu"
print(f"torch {torch.__version__}, {name}, SDPA {hasattr(torch.nn.functional, 'scaled_dot_product_attention')}")
PYCHECK

step "build tiny" 20 60 "$PY" -m pipeline make-tiny "$WORK/tiny"
step "build sd15" 60 150 "$PY" -m bench.sd15_random "$WORK/sd15" --device "$DEVICE" --dtype fp16

SD15=(--model "$WORK/sd15")
bench sd15-fp16 150 240 "${SD15[@]}" --dtype fp16 --sweep "$SWEEP"
bench tiny 45 75 --model "$WORK/tiny" --only big --sweep "$SWEEP"
MIXED=(--only mixedsweep --sweep "$MIXED_SWEEP" --n-sweep "$MIXED_N" --rounds 1)
bench sd15-mixed 90 180 "${SD15[@]}" --dtype fp16 "${MIXED[@]}"
bench sd15-mixed-compile 300 600 "${SD15[@]}" --dtype fp16 --compile "${MIXED[@]}"
bench sd15-bf16 45 75 "${SD15[@]}" --dtype bf16 --only big --rounds 1
bench sd15-fp16-no-channels-last 45 75 "${SD15[@]}" --dtype fp16 --no-channels-last \
  --only big --rounds 1
# COMPILE compiles the UNet for 7 aspect buckets while the worker loads (worker_start_s
# shows that price), so it fits only a larger budget: BENCH_BUDGET_S=1200 bash bench/gpu.sh
bench sd15-fp16-compile 300 900 "${SD15[@]}" --dtype fp16 --compile --only big --rounds 1

echo
echo "## summary ($SUMMARY)"
"$PY" - "$SUMMARY" <<'PYSUM'
import json
import sys

keys = ("ratio_unbatched", "ratio_on_off", "ratio_batched", "full_ips", "full_batched_ips",
        "direct_ips", "latency_p50_s", "lag_p99_ms", "rss_worker_mib", "worker_start_s",
        "seconds")
rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip().startswith("{")]
print("run".ljust(30) + "".join(k[:16].rjust(17) for k in keys))
for row in rows:
    cells = "".join(str(row.get(k, "-")).rjust(17) for k in keys)
    print(row["run"].ljust(30) + cells)
    for batch, fig in (row.get("sweep") or {}).items():
        if isinstance(fig, dict):
            print(f"  MAX_BATCH={batch}: " + ", ".join(f"{k} {v}" for k, v in fig.items()))
    for batch, fig in (row.get("mixed_sweep") or {}).items():
        print(f"  mixed, MAX_BATCH={batch}: image-steps/s {fig['image_steps_per_s']}, "
              f"img/s {fig['ips_wall']}, x{fig['ratio_to_first']} of MAX_BATCH=1")
PYSUM
echo "## done in $SECONDS s; files in $WORK"
