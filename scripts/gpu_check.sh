#!/usr/bin/env bash
# The GPU check as one command, for a session with a lent H200 (about 8-9 minutes):
#
#     OUT=/path/to/results bash scripts/gpu_check.sh
#
# 1. records nvidia-smi and the commit (when .git is present) under $OUT;
# 2. runs benchmarks/gpu_suite.py (all sections: kernel correctness and benchmarks, compress128k,
#    e2e) with a section budget of BUDGET_S seconds, killed after SUITE_S seconds; it writes
#    $OUT/gpu.json, $OUT/e2e.json and $OUT/e2e.png, and its log to $OUT/gpu_suite.log;
# 3. runs csrc/check_ext.py (build + check + time the CUDA extension) with whatever is left of
#    TOTAL_S, if that is at least 90 s; log in $OUT/check_ext.log, JSON in $OUT/check_ext.json;
# 4. prints the tail of the extension log, then the suite's final table.
# Exit status: the suite's (0 green, 1 red, 124 killed). Python: $PYTHON, default python3.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-./gpu_out}
PY=${PYTHON:-python3}
TOTAL_S=${TOTAL_S:-580}
SUITE_S=${SUITE_S:-480}
BUDGET_S=${BUDGET_S:-420}
mkdir -p "$OUT"
start=$(date +%s)
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem,temperature.gpu \
    --format=csv > "$OUT/nvidia-smi.csv" 2>&1 || true
(git rev-parse HEAD 2>/dev/null || echo unknown) > "$OUT/commit.txt"

timeout -k 10 "$SUITE_S" "$PY" benchmarks/gpu_suite.py --out "$OUT/gpu.json" \
    --budget-s "$BUDGET_S" > "$OUT/gpu_suite.log" 2>&1
suite_rc=$?

left=$(( TOTAL_S - ($(date +%s) - start) ))
if [ "$left" -ge 90 ]; then
    timeout -k 5 $(( left - 10 )) "$PY" csrc/check_ext.py --out "$OUT/check_ext.json" \
        > "$OUT/check_ext.log" 2>&1
    ext="exit $?"
else
    ext="skipped (${left}s left)"
fi

echo "== csrc/check_ext.py: $ext"
[ -f "$OUT/check_ext.log" ] && tail -n 15 "$OUT/check_ext.log"
echo "== nvidia-smi: $(tail -n 1 "$OUT/nvidia-smi.csv")"
echo "== benchmarks/gpu_suite.py: exit $suite_rc after $(( $(date +%s) - start ))s in all"
if grep -q '^case  ' "$OUT/gpu_suite.log"; then
    sed -n '/^case  /,$p' "$OUT/gpu_suite.log"
else
    tail -n 60 "$OUT/gpu_suite.log"   # killed before the table: show where it was
fi
exit "$suite_rc"
