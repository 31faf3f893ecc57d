#!/usr/bin/env bash
# The accelerator benchmarks, as one command (for a lent GPU/TPU host with jax/flax/optax present):
#   bash benchmarks/run_accelerator.sh OUTDIR
# Missing pure-Python packages may be given as wheels in .whl/ (ml_collections is the usual one).
# Order: the 125M GPT's profile, its variants, then the other families on random data of MNIST's shape.
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
gpt=benchmarks/configs/gpt_125m_bf16.py
python3 benchmarks/profile_step.py --config $gpt --synthetic --steps 5 --top 30 \
  --trace-dir /tmp/trace_gpt --json "$out/profile_gpt125m_bs32.json"
for bs in 32 64; do
  python3 benchmarks/train_step.py --config $gpt --synthetic --steps 20 --warmup 3 \
    --config.train.batch_size=$bs --json "$out/gpt125m_bf16_bs$bs.json" \
    | grep -E "step_s_median|tokens_per_s|mfu|peak_memory_bytes"
done
for family in gated_pixelcnn_mnist_logistic mae_mnist ddpm_unet_mnist dit_mnist; do
  echo "== $family"
  python3 benchmarks/train_step.py --config benchmarks/configs/$family.py --synthetic --steps 20 \
    --warmup 3 --json "$out/$family.json" | grep -E "params|compile_s|step_s_median|examples_per_s|mfu"
done
