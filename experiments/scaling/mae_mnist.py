"""Scaling laws of masked autoencoders on MNIST (`mnist_test`: 8,000 train / 2,000 test images),
reproducible on a 2-core CPU:

    dul-jax sweep --sweep experiments/scaling/mae_mnist.py --workdir runs/scaling_mae_mnist

mae_mnist.py's MAE (patch 4: 49 patches, 75% masked, pixel targets) with the encoder's width and
depth swept (32-192 wide, 2-6 deep) and the decoder fixed (64 wide, 2 deep; N from 0.13M to
2.8M with it), at three compute budgets (4e11, 1.2e12, 3.6e12 FLOPs: IsoFLOP groups). Training
FLOPs per step are XLA's count of the lowered step (both stacks unrolled so that every layer is
counted); steps = budget / FLOPs per step, kept between 120 and 4,000 (32 epochs of the 8,000
images). AdamW at 1e-3 for every size
(weight decay 0.05, b2 0.95), warm-up min(100, steps/10), cosine decay to 10% over each run.
Every run is scored on the same things:
  loss    the masked-patch MSE on all 2,000 test images, with fixed masks;
  probe   a logistic-regression probe and cosine 20-NN on the frozen, unmasked encoder's cls
          features of the 8,000 train images, accuracy on the 2,000 test images.
N counts every parameter of encoder and decoder but the position tables; the decoder's fixed
share (0.1M) makes the small end flatter than the encoder alone would.
"""

import os

from dul_jax.config import load_config
from dul_jax.scaling.sweep import isoflop_runs

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUDGETS = (4e11, 1.2e12, 3.6e12)
MIN_STEPS, MAX_STEPS = 120, 4000
SHAPES = {  # name: (width, depth, heads)
    'd32_L2': (32, 2, 4),
    'd48_L2': (48, 2, 4),
    'd64_L3': (64, 3, 4),
    'd96_L4': (96, 4, 4),
    'd128_L4': (128, 4, 4),
    'd160_L5': (160, 5, 4),
    'd192_L6': (192, 6, 4),
}
# Second seeds of the frontier runs (the lowest loss of each budget in the first pass).
SEED_REPEATS = ('C4e11_d32_L2', 'C1.2e12_d48_L2', 'C3.6e12_d48_L2')

# the report's loss units; the LLM literature columns do not apply
REPORT = {'units': 'masked-patch MSE', 'literature': False}


def base():
    c = load_config(os.path.join(HERE, 'configs', 'mae_mnist.py'))
    c.optim.update(lr=1e-3, min_lr_ratio=0.1)
    c.train.update(batch_size=64, log_every=100, eval_every=0, ckpt_every=500, sample_every=0,
                   keep_checkpoints=1)
    c.eval.update(batch_size=250, max_examples=0, evaluators=('probe',))
    c.sample.num = 10
    return c


def shape_overrides(width, depth, heads):
    return {'model.embed_dim': width, 'model.num_layers': depth, 'model.num_heads': heads,
            'model.mlp_dim': 4 * width}


def get_sweep():
    c = base()
    shapes = {name: shape_overrides(*shape) for name, shape in SHAPES.items()}
    return c, isoflop_runs(c, BUDGETS, shapes, (MIN_STEPS, MAX_STEPS),
                           lambda steps, size: {'optim.warmup_steps': min(100, steps // 10)},
                           SEED_REPEATS, name_format='C{budget:.2g}_{shape}')
