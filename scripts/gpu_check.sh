#!/usr/bin/env bash
# The GPU check as one command, for a session with a lent H200. One call ends within TOTAL_S
# seconds (540 by default: a minute of margin in a 10-minute command):
#
#     OUT=/path/to/results bash scripts/gpu_check.sh
#     bash scripts/gpu_check.sh --plan      # the time plan and its checks only (no GPU needed)
#
# Every step runs under `timeout` against one deadline, start + TOTAL_S:
# 1. nvidia-smi (at most SMI_S) and the commit (when .git is present) under $OUT;
# 2. benchmarks/gpu_suite.py, all sections, the correctness section first: no section starts
#    after BUDGET_S seconds, the measuring sections size their work to their own budgets
#    (`--dry-run` lists them), and the suite is killed after SUITE_S seconds. Its JSON is
#    rewritten after every section, so the sections that finished are kept. It writes
#    $OUT/gpu.json, $OUT/e2e.json and $OUT/e2e.png (no plot without matplotlib: the log says
#    so), and its log to $OUT/gpu_suite.log;
# 3. csrc/check_ext.py (build + check + time the CUDA extension) with what is left before the
#    deadline, if that is at least EXT_MIN_S; otherwise it is skipped and the summary says so.
#    Log in $OUT/check_ext.log, JSON in $OUT/check_ext.json;
# 4. when the extension was not built before the suite but is now (EXT_GLOB names its file), the
#    kernel sections again (env, epilogue, gca), so that the cuda backend is timed beside torch
#    and triton, with what is left if that is at least CUDA_PASS_MIN_S: $OUT/gpu_cuda.json and
#    $OUT/gpu_suite_cuda.log (the suite times every available backend; a built extension
#    makes "cuda" one);
# 5. prints the tail of the extension log, then the suite's final table.
# A process that outlives its timeout gets KILL_S more seconds, then SIGKILL; each timeout is
# shortened so that this grace also ends by the deadline.
# Exit status: the suite's (0 green, 1 red, 124 killed), or 2 when --plan finds the budgets
# inconsistent. Python: $PYTHON, default python3.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-./gpu_out}
PY=${PYTHON:-python3}
LIMIT_S=${LIMIT_S:-600}       # the command's own limit (the device tool's 10 minutes)
TOTAL_S=${TOTAL_S:-540}       # this script ends by then
SMI_S=${SMI_S:-15}
SUITE_S=${SUITE_S:-430}
BUDGET_S=${BUDGET_S:-380}
EXT_MIN_S=${EXT_MIN_S:-90}
KILL_S=${KILL_S:-10}
MIN_MARGIN_S=${MIN_MARGIN_S:-30}
CUDA_PASS_MIN_S=${CUDA_PASS_MIN_S:-40}
EXT_GLOB=${EXT_GLOB:-lcirc_fast/_C*.so}

plan() {
    local ok=0 smi_end=$(( SMI_S + 2 )) suite_end ext_worst
    suite_end=$(( smi_end + SUITE_S + KILL_S ))
    ext_worst=$(( TOTAL_S - suite_end ))
    echo "gpu_check plan (seconds from the start, worst case):"
    echo "  0-${smi_end}     nvidia-smi (${SMI_S}s + 2s grace)"
    echo "  ${smi_end}-${suite_end}  gpu_suite.py: correctness first; no section starts after" \
         "${BUDGET_S}s of it; killed at ${SUITE_S}s (+${KILL_S}s grace)"
    echo "  then        check_ext.py: what is left of ${TOTAL_S}s, run if >= ${EXT_MIN_S}s" \
         "(after a suite that was killed: ${ext_worst}s$([ "$ext_worst" -lt "$EXT_MIN_S" ] \
         && echo ', so skipped'))"
    echo "  ${TOTAL_S}         hard end; the command's limit is ${LIMIT_S}s:" \
         "margin $(( LIMIT_S - TOTAL_S ))s"
    if [ $(( LIMIT_S - TOTAL_S )) -lt "$MIN_MARGIN_S" ]; then
        echo "plan: TOTAL_S=${TOTAL_S} leaves less than ${MIN_MARGIN_S}s of the ${LIMIT_S}s limit"
        ok=2
    fi
    if [ "$BUDGET_S" -ge "$SUITE_S" ]; then
        echo "plan: BUDGET_S=${BUDGET_S} must be below SUITE_S=${SUITE_S} (time to finish a section)"
        ok=2
    fi
    if [ "$suite_end" -gt "$TOTAL_S" ]; then
        echo "plan: nvidia-smi + the suite (${suite_end}s) exceed TOTAL_S=${TOTAL_S}"
        ok=2
    fi
    [ "$ok" -eq 0 ] && echo "plan: ok"
    return "$ok"
}

if [ "${1:-}" = "--plan" ]; then
    plan
    exit $?
fi
plan > /dev/null || { plan; exit 2; }

mkdir -p "$OUT"
start=$(date +%s)
deadline=$(( start + TOTAL_S ))
left() { echo $(( deadline - $(date +%s) )); }
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

timeout -k 2 "$SMI_S" nvidia-smi \
    --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem,temperature.gpu \
    --format=csv > "$OUT/nvidia-smi.csv" 2>&1 || true
(git rev-parse HEAD 2>/dev/null || echo unknown) > "$OUT/commit.txt"

ext_built() { compgen -G "$EXT_GLOB" > /dev/null; }
ext_built_before=0
ext_built && ext_built_before=1

suite_t=$(( $(left) - KILL_S ))
[ "$suite_t" -gt "$SUITE_S" ] && suite_t=$SUITE_S
echo "== gpu_check: suite limit ${suite_t}s, sections start until ${BUDGET_S}s;" \
     "everything ends within ${TOTAL_S}s" > "$OUT/plan.txt"
timeout -k "$KILL_S" "$suite_t" "$PY" benchmarks/gpu_suite.py --out "$OUT/gpu.json" \
    --budget-s "$BUDGET_S" > "$OUT/gpu_suite.log" 2>&1
suite_rc=$?
[ "$suite_rc" -eq 124 ] || [ "$suite_rc" -eq 137 ] && \
    echo "== gpu_suite.py killed after ${suite_t}s: the sections not in $OUT/gpu.json did not finish" \
    >> "$OUT/gpu_suite.log"

ext_left=$(left)
if [ "$ext_left" -ge "$EXT_MIN_S" ]; then
    timeout -k "$KILL_S" $(( ext_left - KILL_S )) "$PY" csrc/check_ext.py --out "$OUT/check_ext.json" \
        > "$OUT/check_ext.log" 2>&1
    ext="exit $? (limit $(( ext_left - KILL_S ))s)"
else
    ext="skipped: ${ext_left}s left of ${TOTAL_S}s, it needs ${EXT_MIN_S}s (EXT_MIN_S)"
fi

if [ "$ext_built_before" -eq 1 ]; then
    cuda_pass="not needed: the extension was built before the suite, which timed it"
elif ! ext_built; then
    cuda_pass="skipped: the extension is not built"
elif [ "$(left)" -lt "$CUDA_PASS_MIN_S" ]; then
    cuda_pass="skipped: $(left)s left, it needs ${CUDA_PASS_MIN_S}s (CUDA_PASS_MIN_S)"
else
    cuda_t=$(( $(left) - KILL_S ))
    pass_budget=$(( cuda_t - 5 ))
    [ "$pass_budget" -lt 1 ] && pass_budget=1
    timeout -k "$KILL_S" "$cuda_t" "$PY" benchmarks/gpu_suite.py --out "$OUT/gpu_cuda.json" \
        --section env --section epilogue --section gca --budget-s "$pass_budget" \
        > "$OUT/gpu_suite_cuda.log" 2>&1
    cuda_pass="exit $? (limit ${cuda_t}s); table in $OUT/gpu_suite_cuda.log"
fi

echo "== csrc/check_ext.py: $ext"
echo "== cuda backend pass: $cuda_pass"
[ -f "$OUT/check_ext.log" ] && tail -n 15 "$OUT/check_ext.log"
echo "== nvidia-smi: $(tail -n 1 "$OUT/nvidia-smi.csv")"
echo "== benchmarks/gpu_suite.py: exit $suite_rc after $(( $(date +%s) - start ))s in all" \
     "(limit ${TOTAL_S}s)"
if grep -q '^case  ' "$OUT/gpu_suite.log"; then
    sed -n '/^case  /,$p' "$OUT/gpu_suite.log"
else
    tail -n 60 "$OUT/gpu_suite.log"   # killed before the table: show where it was
fi
exit "$suite_rc"
