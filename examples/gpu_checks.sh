#!/usr/bin/env bash
# The device checks of docs/BENCHMARKS.md ("GPU"), in one run on a CUDA machine, most wanted first;
# each step has its own time limit and log, so one failing or slow step does not hide the others.
#   OUT=folder bash examples/gpu_checks.sh        (logs in $OUT, default ./gpu_out)
# Needs memcompile importable: `pip install -e .`, or, offline, MEMCOMPILE_SHIM=1 assembles the
# package in a temporary folder (memcompile/ with passes/ and kernels/ linked in, as the install maps
# them) and puts that folder on PYTHONPATH; never the checkout itself, whose kernels/ would shadow
# PyPI's `kernels` (pulp must be importable).
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if [ "${MEMCOMPILE_SHIM:-0}" = 1 ]; then
    SHIM_DIR=$(mktemp -d)
    mkdir "$SHIM_DIR/memcompile"
    for entry in memcompile/*; do ln -s "$PWD/$entry" "$SHIM_DIR/memcompile/"; done
    ln -s "$PWD/passes" "$SHIM_DIR/memcompile/passes"
    ln -s "$PWD/kernels" "$SHIM_DIR/memcompile/kernels"
    export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$SHIM_DIR"
fi
{
    date -u
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    python3 -c "import torch, triton, pulp, memcompile; print('torch', torch.__version__, 'triton', triton.__version__, 'pulp', pulp.__version__)"
} 2>&1 | tee "$OUT/env.txt"

step() {  # step NAME SECONDS COMMAND...
    local name=$1 limit=$2 start rc
    shift 2
    echo "=== $name (limit ${limit}s): $*"
    start=$(date +%s)
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    rc=$?
    echo "=== $name: exit $rc after $(($(date +%s) - start)) s"
    grep -v -i "warn" "$OUT/$name.log" | grep -v "^ *$" | tail -n "${TAIL:-25}"
}

# Issues 5 and 6: the quantized step against the lossless one (<= 1.05x), offload at a budget that
# forces it (<= 1.10x, copies overlapped), every mode together; bf16, d=1024, 4 layers, batch 8x1024.
step modes 140 python3 examples/bench_gpu_modes.py \
    --variants inductor,memcompile,quantize,quantize@0.5,offload,all --json "$OUT/modes.jsonl"
# Issue 5: bandwidth of each Triton kernel at 64 MiB (per call, and replayed from a CUDA graph), and
# int8 quantize/dequantize per tile size and warp count.
step kernels 90 python3 -m memcompile.kernels.bench_kernels --sweep
# Gradients on CUDA, float32, lossless variants (float reordering only) and quantize.
step grads 60 python3 examples/bench_gpu_modes.py --dtype float32 --dim 256 --heads 4 --seq 256 --batch 4 --vocab 512 \
    --variants inductor,memcompile,offload,all --steps 3 --warmup 1
# The CUDA-marked tests.
step tests 40 python3 -m pytest -q -p no:cacheprovider -m cuda tests/kernels tests/passes/test_offload_rewrite.py
# Issue 4 on CUDA: torch's activation_memory_budget against memcompile, each run its own process.
step bench 90 python3 -m memcompile.bench --model gpt-small --budgets 0.5,0.0 --methods torch-budget,memcompile \
    --device cuda --dtype bfloat16 --steps 10 --warmup 2
