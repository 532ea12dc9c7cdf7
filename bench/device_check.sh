#!/usr/bin/env bash
# GPU check, for a single NVIDIA GPU machine with JAX preinstalled and no network (< 8 minutes):
#   1. the tests that need a GPU (tests/test_gpu.py: cuDNN attention, bf16 thinking step);
#   2. bench.py at GPT-2 small shape (124M, T=1024, bf16) with n = 0 and n = 4 thoughts:
#      tokens/s, model FLOP/s, MFU against the GPU's own bf16 matmul FLOP/s measured in the run;
#   3. bench.py at the CPU preset's shape: the variable-count step (counts 0..8 in one program,
#      running n=2, against the fixed n=2 step) and 3 seeds in one vmapped step (against one seed).
# Results go to stdout and, where $OUT is set (the device tool), to $OUT/*.log / bench.json.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/device_check}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 XLA_PYTHON_CLIENT_MEM_FRACTION=0.9
py=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$out/gpu.log"
$py -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__, jax.devices())" 2>&1 | tee -a "$out/gpu.log"
timeout 180 $py -m pytest -q -p no:cacheprovider tests/test_gpu.py 2>&1 | tee "$out/gpu_tests.log"
# BENCH_ARGS replaces the bench arguments, e.g. for a dry run of this script on a CPU:
#   BENCH_ARGS="--preset cpu --batch 2 --thoughts 0 --rounds 1 --gen-tokens 4" bash bench/device_check.sh
timeout 280 $py bench.py ${BENCH_ARGS:---preset gpt2-small --thoughts 0,4 --chain unrolled --rounds 3 --gen-tokens 128} --json \
  2> "$out/bench_stderr.log" | tee "$out/bench.json"
$py - "$out/bench.json" <<'PY' 2>/dev/null | tee "$out/bench.txt"
import json, sys
from silentstar_jax.benchmark import format_report
print(format_report(json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])))
PY
# the rows of the performance issue: variable thought count, several seeds in one program
timeout 240 $py bench.py ${BENCH2_ARGS:---preset cpu --thoughts 0,2 --chain scan,unrolled --variable-n 8 --seeds 3 --rounds 3 --gen-tokens 0 --compare-dtype=} --json \
  2> "$out/bench2_stderr.log" | tee "$out/bench2.json"
$py - "$out/bench2.json" <<'PY' 2>/dev/null | tee "$out/bench2.txt"
import json, sys
from silentstar_jax.benchmark import format_report
print(format_report(json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])))
PY
