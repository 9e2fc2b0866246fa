#!/usr/bin/env bash
# The CUDA checks of issues 10 and 11 as one prepared command, for a session lent a GPU machine
# (torch there, no optree: carried as a wheel; the repo on PYTHONPATH instead of installed).
#
# Here, once (the wheel for the device machine's Python 3.12):
#   mkdir -p .git/info && echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#       -d .whl optree==0.20.0
# Then one device run (carry [".whl"], timeout_s 600), which leaves everything under $OUT
# (at most 8 files come back: session.log, cuda-tests.log and two reports of md/json/png):
#   bash benchmarks/cuda_session.sh
# Stages, each under its own time limit so that the whole fits in one 10-minute call:
#   1. the CUDA tests (tests/test_cuda.py, and the CUDA cases of the other files), log in $OUT,
#      with the output of passed tests (the compiled steps' Triton launch counts); since
#      2026-12-04 test_cuda.py compiles about 25 steps more: give the stage TEST_LIMIT_S=240 and
#      the others a second call when the budget allows;
#   2. python -m benchmarks.run --quick --large --torch-optim --no-compile: every optimizer and
#      implementation eagerly on transformer, many-small and large (cuda-<gpu>-quick.{md,json,png});
#   3. python -m benchmarks.run --quick --large --optimizers Adam --workloads transformer: the compiled
#      steps (functional, in place, torch.compile of torch's and compat's step, the hparams probe) on
#      transformer and large (cuda-<gpu>-quick-compiled.{md,json,png});
#   4. python -m benchmarks.profile_step: torch.profiler of torch fused Adam and ours on transformer
#      (large took more than its 45 s on 2026-12-04: cold compiles).
# STAGES picks and orders them (default "tests eager compiled profile"): with 15 minutes of device
# time in all, one call of STAGES="tests compiled" (TEST_LIMIT_S=240 COMPILED_LIMIT_S=300) measures
# what changed since the run of 2026-12-04 first, and a second call, if the budget still allows,
# STAGES="eager profile".
# The benchmark writes its report after every block, so a stage stopped by its limit still leaves
# one (with a note saying where it stopped). DEVICE=cpu runs the same stages on the CPU (a dry run
# of the script itself; the CUDA tests then skip). Extra arguments go to both benchmark runs.
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/cuda_session}"
DEVICE="${DEVICE:-cuda}"
TEST_LIMIT_S="${TEST_LIMIT_S:-120}"
EAGER_LIMIT_S="${EAGER_LIMIT_S:-110}"
COMPILED_LIMIT_S="${COMPILED_LIMIT_S:-240}"
PROFILE_LIMIT_S="${PROFILE_LIMIT_S:-45}"
STAGES="${STAGES:-tests eager compiled profile}"
for s in $STAGES; do
    case "$s" in tests|eager|compiled|profile) ;; *) echo "unknown stage '$s' (tests, eager, compiled, profile)"; exit 2;; esac
done
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
LOG="$OUT/session.log"
exec 3>&1  # the call's own output: each stage's header and exit status (the stages write to files)

if ! "$PY" -c "import optree" 2>/dev/null && compgen -G ".whl/*.whl" > /dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || { echo "installing the carried wheels failed"; exit 1; }
    export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1

{
    date -u +"%Y-%m-%d %H:%M UTC"
    nvidia-smi -L 2>/dev/null || echo "no nvidia-smi"
    "$PY" -c "import torch, optree; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'optree', optree.__version__, 'gpu', torch.cuda.get_device_name() if torch.cuda.is_available() else None)"
    nproc
} 2>&1 | tee "$LOG"

stage() {  # stage NAME LIMIT_S COMMAND...: run under a time limit, log its exit status and time
    local name=$1 limit=$2 t0=$SECONDS
    shift 2
    echo "== $name (limit ${limit} s)" | tee -a "$LOG" >&3
    timeout "$limit" "$@"
    echo "== $name: exit status $? after $((SECONDS - t0)) s" | tee -a "$LOG" >&3
}

xdist=()
"$PY" -c "import xdist" 2>/dev/null && xdist=(-n 6)
large=()
[ "$DEVICE" = cuda ] && large=(--large)
for s in $STAGES; do
    case "$s" in
    tests)
        stage "CUDA tests" "$TEST_LIMIT_S" "$PY" -m pytest -q -p no:cacheprovider -rsP "${xdist[@]}" tests/test_cuda.py \
            tests/test_adadelta.py tests/test_adagrad.py tests/test_nadam.py tests/test_rmsprop.py tests/test_low_precision.py \
            tests/test_accelerator_path.py -k "cuda or accelerator" > "$OUT/cuda-tests.log" 2>&1
        tail -n 30 "$OUT/cuda-tests.log" | tee -a "$LOG";;
    eager)
        stage "benchmark, eager" "$EAGER_LIMIT_S" "$PY" -m benchmarks.run --quick "${large[@]}" --torch-optim --no-compile \
            --device "$DEVICE" --out "$OUT" "$@" >> "$LOG" 2>&1;;
    compiled)
        stage "benchmark, compiled Adam" "$COMPILED_LIMIT_S" "$PY" -m benchmarks.run --quick "${large[@]}" --optimizers Adam \
            --workloads transformer --device "$DEVICE" --out "$OUT" --tag compiled "$@" >> "$LOG" 2>&1;;
    profile)
        stage "profile, Adam on transformer" "$PROFILE_LIMIT_S" "$PY" -m benchmarks.profile_step --workload transformer \
            --device "$DEVICE" >> "$LOG" 2>&1;;
    esac
done
ls -l "$OUT" | tee -a "$LOG"
