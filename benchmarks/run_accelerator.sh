#!/usr/bin/env bash
# The accelerator benchmark, as one command (for a lent GPU/TPU host with jax/flax/optax present):
#   bash benchmarks/run_accelerator.sh OUTDIR
# Missing pure-Python packages may be given as wheels in .whl/ (ml_collections is the usual one).
set -uo pipefail
out=${1:-/tmp/dul_jax_bench}
mkdir -p "$out"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null
python3 -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, jax.devices())"
for bs in 32 64; do
  python3 benchmarks/train_step.py --config benchmarks/configs/gpt_125m_bf16.py --synthetic \
    --steps 20 --warmup 3 --config.train.batch_size=$bs --json "$out/gpt125m_bf16_bs$bs.json"
done
