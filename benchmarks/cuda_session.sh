#!/usr/bin/env bash
# The CUDA checks of issues 10 and 11 as one prepared command, for a session lent a GPU machine
# (torch there, no optree: carried as a wheel; the repo on PYTHONPATH instead of installed).
#
# Here, once (the wheel for the device machine's Python 3.12):
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#       -d .whl optree==0.20.0
# Then one device run (carry [".whl"], timeout_s 600), which leaves everything under $OUT:
#   bash benchmarks/cuda_session.sh
# Stages, each under its own time limit so that the whole fits in one 10-minute call:
#   1. the CUDA tests (tests/test_cuda.py, and the CUDA cases of the other files), log in $OUT;
#   2. python -m benchmarks.run --quick --large --torch-optim --device cuda (cuda-<gpu>-quick.{md,json,png}).
# Extra arguments go to the benchmark (e.g. --optimizers Adam,SGD). DEVICE=cpu runs the same
# stages on the CPU (a dry run of the script itself; the CUDA tests then skip).
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/cuda_session}"
DEVICE="${DEVICE:-cuda}"
TEST_LIMIT_S="${TEST_LIMIT_S:-210}"
BENCH_LIMIT_S="${BENCH_LIMIT_S:-330}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"

if compgen -G ".whl/*.whl" > /dev/null; then
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
} 2>&1 | tee "$OUT/env.txt"

echo "== stage 1: CUDA tests (limit ${TEST_LIMIT_S} s)"
timeout "$TEST_LIMIT_S" "$PY" -m pytest -q -p no:cacheprovider -rs tests/test_cuda.py \
    tests/test_adadelta.py tests/test_adagrad.py tests/test_nadam.py tests/test_low_precision.py -k cuda \
    > "$OUT/cuda-tests.log" 2>&1
echo "pytest exit status $?" | tee -a "$OUT/cuda-tests.log"
tail -n 25 "$OUT/cuda-tests.log"

echo "== stage 2: benchmark (limit ${BENCH_LIMIT_S} s)"
large=()
[ "$DEVICE" = cuda ] && large=(--large)
timeout "$BENCH_LIMIT_S" "$PY" -m benchmarks.run --quick "${large[@]}" --torch-optim --device "$DEVICE" \
    --out "$OUT" "$@" > "$OUT/benchmark.log" 2>&1
echo "benchmark exit status $?" | tee -a "$OUT/benchmark.log"
tail -n 5 "$OUT/benchmark.log"
ls -l "$OUT"
