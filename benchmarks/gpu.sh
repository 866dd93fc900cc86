#!/usr/bin/env bash
# Issue 10's GPU figures in one run on one H100 or H200: per-step speed, bound, peak memory,
# first-call latency and 50-step generations of a FLUX.1-dev-width transformer (4096 image
# + 512 text tokens, 24x128 heads, bf16), plain torch.compile against jano in the same
# mode (default and reduce-overhead), the host time of a step and the step time against the
# graph length (to choose the bucket size) at 2 + 4 blocks. Depth defaults to 5 + 10 blocks to keep compiles short;
# each block is the FLUX.1-dev block, so the ratios are per-block ratios.
#
#   OUT=gpu_out bash benchmarks/gpu.sh      # logs in $OUT (default ./gpu_out), each also on stdout
#   FULL_DEPTH=1 ...                        # then also step_speed at the full depth (19 + 38 blocks)
#   LAYERS=.. SINGLE=..                     # another default depth; CMD_TIMEOUT=s caps each command
#   ONLY="step_default pipeline_default"    # only these commands (names as their logs), e.g. to split the run
#
# The most important figures come first. A failing command does not stop the others; each
# one's exit status and seconds go to $OUT/summary.log; when the CUDA tests fail, nothing
# else runs (device time is scarce). Offline: diffusers, if missing, is installed from the
# wheels in $WHEELS (default .whl, git-ignored; carry it to the GPU machine). The image
# there (Python 3.12) lacks diffusers and importlib_metadata; fill .whl once with
#   echo /.whl/ >> .git/info/exclude
#   pip download --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl diffusers==0.42.1
# (numpy and Pillow may be deleted from .whl: the image has them). Split a run that would
# pass the device's 10-minute command limit with ONLY, e.g. (the last run's three calls,
# 2026-11-27 afternoon, H200: 357, 254 and 148 s of command time, 810 s of device time with
# the start):
#   OUT=$OUT/a ONLY="tests_cuda step_reduce-overhead pipeline_paper_reduce-overhead" CMD_TIMEOUT=300 bash benchmarks/gpu.sh
#   OUT=$OUT/b ONLY="profile_partial_reduce-overhead step_static_reduce-overhead" CMD_TIMEOUT=250 bash benchmarks/gpu.sh
#   OUT=$OUT/c ONLY="pipeline_work_reduce-overhead" CMD_TIMEOUT=215 bash benchmarks/gpu.sh
# Owed (next device session; ~15 device minutes with the machine's start, each call <= 10 minutes):
#   call 1: FULL_DEPTH=1 OUT=$OUT/a ONLY=step_full_depth CMD_TIMEOUT=560, timeout_s 590
#           (reduce-overhead, no bound graphs: a plain compile and jano's one, each ~3.8 times
#           the 5 + 10-block compile of ~30 s, so ~4-5 minutes cold)
#   call 2 (at once, while the machine is warm): OUT=$OUT/b
#           ONLY="step_default pipeline_paper_default" CMD_TIMEOUT=200 (~130 + ~80 s): default
#           mode on the code since full steps took the symbolic graph (the last default-mode
#           figures are the 2026-11-27 morning's)
set -u
if [ -n "${ONLY:-}" ]; then    # a misspelt name would run nothing and still spend device time
    known=$(sed -n 's/^ *run \([^ ]*\) .*/\1/p' "$0")
    for name in $ONLY; do
        if ! grep -qx -- "$name" <<<"$known"; then
            echo "gpu.sh: ONLY names no command: $name; the commands are:" $known >&2
            exit 2
        fi
    done
fi
OUT=${OUT:-./gpu_out}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
SUMMARY=$OUT/summary.log
SIZE=(--flux-dev --layers "${LAYERS:-5}" --single-layers "${SINGLE:-10}" --dtype bfloat16 --device cuda)
STEP=(--fractions 1.0,0.3,0.1 --rounds 5)
FAILED=0

note() { echo "$*" | tee -a "$SUMMARY"; }

# the SM clock, power and temperature every 250 ms while the script runs (a clock that drops under
# sustained load makes calls issued back to back slower than calls one at a time)
log_clocks() {
    command -v nvidia-smi >/dev/null || return 0
    nvidia-smi --query-gpu=timestamp,clocks.sm,clocks.mem,power.draw,temperature.gpu \
        --format=csv,nounits -lms 250 >"$OUT/gpu_clocks.csv" 2>/dev/null &
    CLOCKS_PID=$!
    trap 'kill $CLOCKS_PID 2>/dev/null' EXIT
}

# run NAME CMD...: CMD's output to stdout and $OUT/NAME.log, its exit status to the summary;
# rc 0 without running it when ONLY leaves NAME out.
run() {
    local name=$1 start=$SECONDS rc
    shift
    if [ -n "${ONLY:-}" ] && [[ " $ONLY " != *" $name "* ]]; then
        return 0
    fi
    note "== $name: $* (from $(date +%T))"
    timeout "${CMD_TIMEOUT:-0}" "$@" 2>&1 | tee "$OUT/$name.log"
    rc=${PIPESTATUS[0]}
    note "== $name: rc=$rc, $((SECONDS - start)) s (until $(date +%T))"
    return "$rc"
}

setup() {
    nvidia-smi -L
    "$PY" -c 'import sys, torch; print("python", sys.version.split()[0], "| torch", torch.__version__,
                                       "| CUDA", torch.version.cuda)'
    "$PY" -c 'import triton; print("triton", triton.__version__)'
    "$PY" -m pip install -q --no-index --no-deps --no-build-isolation -e . || echo "pip install -e . failed"
    if ! "$PY" -c "import diffusers" 2>/dev/null; then
        "$PY" -m pip install -q --no-index --find-links "${WHEELS:-.whl}" diffusers \
            || echo "diffusers install from wheels failed"
    fi
    "$PY" -c 'import diffusers, jano_compile; print("diffusers", diffusers.__version__,
                                                   "| jano_compile", jano_compile.__file__)'
}

: >"$SUMMARY"
setup 2>&1 | tee -a "$SUMMARY"
log_clocks

SMALL=(--flux-dev --layers 2 --single-layers 4 --dtype bfloat16 --device cuda)
run tests_cuda "$PY" -m pytest -q -x tests -k cuda
case $? in
    0) ;;
    5) note "(pytest rc 5: no test matched -k cuda; fine)" ;;
    *) note "the CUDA tests failed: no benchmark runs"; exit 1 ;;
esac

run step_default "$PY" benchmarks/step_speed.py "${SIZE[@]}" "${STEP[@]}" || FAILED=1
run step_reduce-overhead "$PY" benchmarks/step_speed.py "${SIZE[@]}" "${STEP[@]}" --mode reduce-overhead || FAILED=1
# the same schedule as the default-mode figure the issue starts from (paper recipe, reference intervals)
run pipeline_paper_reduce-overhead "$PY" benchmarks/pipeline_speed.py "${SIZE[@]}" --runs 3 --recipe paper \
    --mode reduce-overhead || FAILED=1
run pipeline_paper_default "$PY" benchmarks/pipeline_speed.py "${SIZE[@]}" --runs 3 --recipe paper || FAILED=1
run pipeline_reduce-overhead "$PY" benchmarks/pipeline_speed.py "${SIZE[@]}" --runs 3 --mode reduce-overhead || FAILED=1
run pipeline_work_reduce-overhead "$PY" benchmarks/pipeline_speed.py "${SIZE[@]}" --runs 3 --work 0.4 \
    --forecast-kv --mode reduce-overhead || FAILED=1
# a refresh step against plain at the depth whose per-call excess is to be explained, then 2 + 4 blocks
run profile_refresh_reduce-overhead "$PY" benchmarks/profile_step.py "${SIZE[@]}" --fractions 1.0 \
    --mode reduce-overhead --trace "$OUT/traces/refresh_reduce-overhead" || FAILED=1
run profile_reduce-overhead "$PY" benchmarks/profile_step.py "${SMALL[@]}" --fractions 1.0,0.3 \
    --mode reduce-overhead --trace "$OUT/traces/reduce-overhead" || FAILED=1
# the partial steps whose ratio to the bound is highest, kernel by kernel at the default depth
run profile_partial_reduce-overhead "$PY" benchmarks/profile_step.py "${SIZE[@]}" --fractions 0.3,0.1 \
    --mode reduce-overhead --trace "$OUT/traces/partial_reduce-overhead" || FAILED=1
# static graphs per length and the full-step graph (static_shapes=True; the default is the symbolic
# graph for every step since the H200 measured it as fast: fewer compiles, no padding of region sets)
run step_static_reduce-overhead "$PY" benchmarks/step_speed.py "${SIZE[@]}" "${STEP[@]}" --shapes static \
    --mode reduce-overhead --full-through-partial || FAILED=1
run pipeline_static_reduce-overhead "$PY" benchmarks/pipeline_speed.py "${SIZE[@]}" --runs 3 --recipe paper \
    --shapes static --mode reduce-overhead || FAILED=1
# why a default-mode full step costs more than under reduce-overhead (host-bound stretches show as wall above busy)
run profile_default "$PY" benchmarks/profile_step.py "${SMALL[@]}" --fractions 1.0,0.3 \
    --trace "$OUT/traces/default" || FAILED=1
if [ -d "$OUT/traces" ]; then   # one file back from the device instead of one per setting
    tar cf "$OUT/traces.tar" -C "$OUT" traces && rm -r "$OUT/traces"
fi
run bucket_sweep "$PY" benchmarks/bucket_sweep.py "${SMALL[@]}" --lengths 1152:1344:32 --mode reduce-overhead || FAILED=1
if [ "${FULL_DEPTH:-0}" = 1 ]; then
    # no bound graphs (each a plain compile at the full depth): the per-block bound ratios are
    # the 5 + 10-block figures
    run step_full_depth "$PY" benchmarks/step_speed.py --flux-dev --dtype bfloat16 --device cuda \
        --fractions 1.0,0.3,0.1 --rounds 3 --no-bound --mode reduce-overhead || FAILED=1
else
    note "full depth (19 + 38 blocks): owed, not run (FULL_DEPTH=1 runs it)"
fi
note "done in $SECONDS s; $([ $FAILED = 0 ] && echo "every command succeeded" || echo "SOME COMMANDS FAILED")"
exit $FAILED
