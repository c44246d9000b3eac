#!/usr/bin/env bash
# GPU check in one short run (each step time-limited, about 5 minutes at most): install the
# project in its own environment, run the test suite's CUDA-marked tests (`pytest -m cuda`: the
# render queue of `featvis serve --device cuda` in float32 and bfloat16, and whatever other tests
# carry the `cuda` marker), then the render, examples and serve benchmarks on the GPU, with
# bench_render.py's ratios against Lucent.
#
#   FEATVIS_WEIGHTS_DIR=../shared/weights bash benchmarks/gpu_check.sh
#
# Every step has its own time limit, so the whole run stays bounded; a failed step is reported and
# the next one still runs; the exit code is that of the tests.
set -uo pipefail
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1 MPLBACKEND=Agg
: "${FEATVIS_WEIGHTS_DIR:=../shared/weights}"
export FEATVIS_WEIGHTS_DIR
VENV=${VENV:-.venv-gpu}

step() {  # step SECONDS TITLE COMMAND...: run with a time limit, say how it went
  local limit=$1 title=$2
  shift 2
  echo "=== $title (limit ${limit} s)"
  local began=$SECONDS
  timeout "$limit" "$@"
  local rc=$?
  echo "=== $title: exit $rc after $((SECONDS - began)) s"
  return $rc
}

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L; then
  echo "no NVIDIA GPU here (nvidia-smi finds none): nothing to check" >&2
  exit 1
fi

if [ ! -x "$VENV/bin/python" ]; then
  step 100 "install" bash -c "python3 -m venv '$VENV' && '$VENV/bin/pip' install -q torch==2.14.1 torchvision==0.29.1 && '$VENV/bin/pip' install -q '.[test]'" || exit 1
fi
PY="$VENV/bin/python"
step 20 "CUDA visible to torch" "$PY" -c "import torch; assert torch.cuda.is_available(), 'torch sees no GPU'; print(torch.__version__, torch.cuda.get_device_name(0))" || exit 1

step 75 "CUDA-marked tests" "$PY" -m pytest -q -m cuda -rs tests
tests=$?

# bench_render.py / bench_examples.py take --device where they support it; otherwise they time the CPU
device_args() { if "$PY" "$1" --help 2>/dev/null | grep -q -- "--device"; then echo "--device cuda"; else echo "" ; fi; }
for bench in benchmarks/bench_render.py benchmarks/bench_examples.py; do
  args=$(device_args "$bench")
  [ -z "$args" ] && echo "note: $bench has no --device option yet: its figures below are for the CPU"
done
# shellcheck disable=SC2046
step 40 "bench_render (featvis vs Lucent)" "$PY" benchmarks/bench_render.py --steps 8 --lucent-steps 8 --repeats 1 --batches 1,16 $(device_args benchmarks/bench_render.py)
# shellcheck disable=SC2046
step 30 "bench_examples" "$PY" benchmarks/bench_examples.py --quick $(device_args benchmarks/bench_examples.py)
for precision in float32 bfloat16; do
  step 25 "bench_serve on cuda ($precision)" "$PY" benchmarks/bench_serve.py --device cuda --precision "$precision" --steps 64
done
exit $tests
