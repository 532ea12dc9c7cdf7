#!/usr/bin/env bash
# GPU check, for a single NVIDIA GPU machine with JAX preinstalled and no network (each step has its own timeout; the four add up to at most 14 minutes):
#   1. the tests that need a GPU (tests/test_gpu.py: cuDNN attention, bf16 thinking step);
#   2. bench.py at GPT-2 small shape (124M, T=1024, bf16) with n = 0 and n = 4 thoughts:
#      tokens/s, model FLOP/s, MFU against the GPU's own bf16 matmul FLOP/s measured in the run;
#   3. bench.py at the CPU preset's shape: the variable-count step (counts 0..8 in one program,
#      running n=2, against the fixed n=2 step) and 3 seeds in one vmapped step (against one seed).
#   4. bench.py at the CPU preset's shape, n = 2 and 16: chain scan (hand-written backward) vs unrolled.
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
#   BENCH_ARGS="--preset cpu --batch 2 --thoughts 0 --rounds 1 --gen-tokens 4" (and BENCH2_ARGS, BENCH3_ARGS
#   likewise for the later calls) bash bench/device_check.sh
bench() {   # NAME SECONDS ARGS...: $out/NAME.json (bench.py --json), its table in $out/NAME.txt
  local name=$1 limit=$2
  shift 2
  timeout "$limit" $py bench.py "$@" --json 2> "$out/${name}_stderr.log" | tee "$out/$name.json"
  $py -c 'import json, sys; from silentstar_jax.benchmark import format_report
print(format_report(json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])))' "$out/$name.json" \
    2>/dev/null | tee "$out/$name.txt"
}
bench bench 280 ${BENCH_ARGS:---preset gpt2-small --thoughts 0,4 --chain unrolled --rounds 3 --gen-tokens 128}
# the rows of the performance issue: variable thought count, several seeds in one program
bench bench2 240 ${BENCH2_ARGS:---preset cpu --thoughts 0,2 --chain scan,unrolled --variable-n 8 --seeds 3 --rounds 3 --gen-tokens 0 --compare-dtype=}
# the chain scan's hand-written backward against the written-out chain, short and long chains
bench bench3 150 ${BENCH3_ARGS:---preset cpu --thoughts 2,16 --chain scan,unrolled --rounds 3 --gen-tokens 0 --compare-dtype=}
