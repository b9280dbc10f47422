#!/bin/bash
# The checks that need a GPU, in one run of under 8 minutes on one H100/H200, ending with one summary:
#   1. the fused-kernel tests on CUDA (tests/test_kernels.py; they skip what flash-attn/liger-kernel lack)
#   2. scripts/bench/model_step.py --device cuda --dtype bfloat16: our step against transformers' Llama
#   3. a 30-step bf16 tiny_LLaMA_1b run on the sample data: tokens/s and MFU from its metrics.csv
#   4. a tiny grow-and-continue on the GPU: 4L128H trained, grown by G_stack to 8L128H, trained again
#
#   scripts/gpu_check.sh [--dry_run] [--out_dir DIR]
#
# Needs the sample data (python scripts/prepare_sample_data.py --out_dir data/sample; on a machine without internet,
# copy data/sample/packed and data/sample/tokenizer there). PYTHON defaults to .venv/bin/python, else python3.
# Each check has its own time limit and the script goes on after a failure; the exit status is the number of
# checks that failed. Full logs are in DIR (default out/gpu_check).
set -uo pipefail
cd "$(dirname "$0")/.."
DRY=0
OUT=out/gpu_check
while [ $# -gt 0 ]; do
    case "$1" in
        --dry_run) DRY=1 ;;
        --out_dir|--out) OUT=${2:?$1 needs a directory}; shift ;;
        -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "error: unknown argument $1 (use --dry_run, --out_dir DIR)" >&2; exit 2 ;;
    esac
    shift
done
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHONUNBUFFERED=1
DATA=data/sample/packed
declare -a NAMES RESULTS
FAILED=0

check() {  # check NAME SECONDS COMMAND...: runs it under a time limit, logs to $OUT/NAME.log
    local name=$1 limit=$2
    shift 2
    if [ "$DRY" = 1 ]; then
        echo "[$name] timeout $limit $*"
        return 0
    fi
    echo "[$name] $*"
    local start=$SECONDS
    timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
    local code=$?
    NAMES+=("$name")
    if [ $code = 0 ]; then
        RESULTS+=("ok ($((SECONDS - start)) s)")
    else
        RESULTS+=("FAILED, exit $code ($((SECONDS - start)) s): see $OUT/$name.log")
        FAILED=$((FAILED + 1))
        tail -n 5 "$OUT/$name.log"
    fi
    return $code
}

metrics_summary() {  # median tokens/s and MFU of the steps after the first 10 of a run's metrics.csv
    "$PYTHON" - "$1" <<'PY'
import csv, statistics, sys
rows = [r for r in csv.DictReader(open(sys.argv[1])) if int(r["step"]) > 10 and r["tokens_per_sec"]]
tps = statistics.median(float(r["tokens_per_sec"]) for r in rows)
mfu = [float(r["mfu"]) for r in rows if r["mfu"]]
print(f"{tps:,.0f} tokens/s, MFU {statistics.median(mfu):.1%}" if mfu else f"{tps:,.0f} tokens/s, MFU unknown (GPU not in the peak table)")
PY
}

if [ "$DRY" = 0 ]; then
    mkdir -p "$OUT"
    if ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
        echo "error: $PYTHON sees no CUDA GPU; this script is for a GPU machine (--dry_run prints its commands)" >&2
        exit 1
    fi
    if [ ! -d "$DATA" ]; then
        echo "error: no $DATA: run python scripts/prepare_sample_data.py --out_dir data/sample (or copy it here)" >&2
        exit 1
    fi
    "$PYTHON" -c "import torch; print('GPU:', torch.cuda.get_device_name(), '| torch', torch.__version__)" | tee "$OUT/gpu.txt"
fi

check kernels 180 "$PYTHON" -m pytest -q -rs tests/test_kernels.py
check model_step 180 "$PYTHON" scripts/bench/model_step.py --device cuda --dtype bfloat16
RUN=(pretrain/tinyllama.py --model_name tiny_LLaMA_1b --train_data_dir "$DATA" --precision bf16-mixed
     --global_batch_size 32 --micro_batch_size 8 --max_steps 30 --warmup_steps 10 --learning_rate 3e-4
     --eval_interval 0 --save_interval 30 --log_interval 1 --out_dir "$OUT/tiny_LLaMA_1b")
rm -rf "$OUT/tiny_LLaMA_1b" "$OUT/base" "$OUT/grown" "$OUT/continued"
check tiny_LLaMA_1b 300 "$PYTHON" "${RUN[@]}"
SMALL=(--train_data_dir "$DATA" --global_batch_size 16 --micro_batch_size 8 --max_steps 20 --warmup_steps 2
       --learning_rate 3e-3 --eval_interval 10 --save_interval 20)
check grow_continue 240 bash -c "set -e
    '$PYTHON' pretrain/tinyllama.py --model_name 4L128H ${SMALL[*]} --out_dir '$OUT/base'
    '$PYTHON' -m growth grow --src '$OUT/base/final' --target 8L128H --op stack --out_dir '$OUT/grown'
    '$PYTHON' pretrain/tinyllama.py --model_name 8L128H --initial_checkpoint '$OUT/grown' ${SMALL[*]} --out_dir '$OUT/continued'
    test -f '$OUT/continued/final/lit_model.pth'"
[ "$DRY" = 1 ] && exit 0

echo
echo "summary ($(cat "$OUT/gpu.txt"))"
for i in "${!NAMES[@]}"; do
    printf '  %-14s %s\n' "${NAMES[$i]}" "${RESULTS[$i]}"
done
grep -E "passed|skipped|failed" "$OUT/kernels.log" | tail -n 1 | sed 's/^/  kernels:       /'
grep -E "x HF" "$OUT/model_step.log" | sed 's/^/  model_step:    /'
[ -f "$OUT/tiny_LLaMA_1b/metrics.csv" ] && echo "  tiny_LLaMA_1b: $(metrics_summary "$OUT/tiny_LLaMA_1b/metrics.csv")"
[ -f "$OUT/continued/metrics.csv" ] && echo "  grow_continue: $(tail -n 1 "$OUT/continued/metrics.csv" | cut -d, -f1,4 | sed 's/,/ steps, loss /')"
exit "$FAILED"
