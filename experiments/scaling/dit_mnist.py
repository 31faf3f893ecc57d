"""Scaling laws of diffusion transformers (DiT) on MNIST (`mnist_test`: 8,000 train / 2,000 test
images, 256 levels), reproducible on a 2-core CPU:

    python experiments/domain_fid.py train-classifier --data mnist_test \
        --out runs/fid_classifier_mnist_test
    dul-jax sweep --sweep experiments/scaling/dit_mnist.py --workdir runs/scaling_dit_mnist

Patch-4 DiTs (49 tokens) from 32 wide x 2 deep to 160 x 5 (0.05M to 2.4M parameters) at three
compute budgets (1e12, 3e12, 1e13 FLOPs: IsoFLOP groups), and patch-7 DiTs (16 tokens; up to
192 x 5, 3.5M) at 3e12, for FID against forward GFLOPs across width, depth and patch size.
Training FLOPs per step are XLA's count of the lowered step (the stack unrolled so that every
layer is counted); steps = budget / FLOPs per step, kept between 150 and 8,000 (64 epochs).
8,000 images cannot give even these models fresh data: every budget repeats images, and the
compute-optimal sizes are small ones trained for many epochs.
The diffusion is dit_mnist_cpu.py's: cosine schedule, T = 1000, v-prediction, min-SNR-5
weighting, class-conditional with 10% label dropout; Adam at 1e-3 for every size, warm-up
min(200, steps/10), cosine decay to 10% over each run's own length; EMA decay 1 - 10/steps (at
most 0.999), so every run's EMA has forgotten its initialisation alike.
Every run is scored with its EMA params on the same things:
  loss      the training objective (v-MSE, min-SNR-5 weighting, t uniform) on all 2,000 test
            images with fixed noise: one timestep distribution and weighting for every run;
  bound     the variational bound in bits/dim on the first 16 test images (all 1000 terms);
  fid       domain FID of 256 class-conditional samples (DDIM, 50 steps, eta 0, no guidance)
            against the test images, in the features of a classifier trained on mnist_test.
"""

import os

from dul_jax.config import load_config
from dul_jax.scaling.sweep import isoflop_runs

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSIFIER = os.environ.get('DUL_JAX_FID_CLASSIFIER', 'runs/fid_classifier_mnist_test')
BUDGETS = (1e12, 3e12, 1e13)
MIN_STEPS, MAX_STEPS = 150, 8000
SHAPES = {  # name: (patch, width, depth, heads); patch 4: the IsoFLOP groups
    'p4_d32_L2': (4, 32, 2, 2),
    'p4_d48_L2': (4, 48, 2, 4),
    'p4_d64_L3': (4, 64, 3, 4),
    'p4_d96_L4': (4, 96, 4, 4),
    'p4_d128_L4': (4, 128, 4, 4),
    'p4_d160_L5': (4, 160, 5, 4),
}
# Patch 7 (16 tokens: a third of patch 4's FLOPs per parameter) at the middle budget only, outside
# the IsoFLOP groups (another FLOPs-per-parameter would blur the parabolas): with the patch-4 runs
# of that budget, equal compute spent on more parameters and fewer tokens.
PATCH7 = {'p7_d64_L3': (7, 64, 3, 4), 'p7_d128_L4': (7, 128, 4, 4), 'p7_d192_L5': (7, 192, 5, 4)}
PATCH7_BUDGET = 3e12
# Second seeds of the frontier runs: the lowest loss of each budget when the first 14 runs were
# done (d32 at 3e12 and d48 at 1e13, added when the step cap rose to 8,000, came after).
SEED_REPEATS = ('C1e12_p4_d48_L2', 'C3e12_p4_d48_L2', 'C1e13_p4_d64_L3')

# the report's loss units; the LLM literature columns do not apply
REPORT = {'units': 'v-MSE (min-SNR-5 weighted)', 'literature': False}


def base():
    c = load_config(os.path.join(HERE, 'configs', 'dit_mnist_cpu.py'))
    c.optim.update(lr=1e-3, min_lr_ratio=0.1)
    c.train.update(batch_size=64, log_every=100, eval_every=0, ckpt_every=500, sample_every=0,
                   keep_checkpoints=1)
    c.eval.update(batch_size=250, max_examples=0, evaluators=('bound', 'fid'))
    c.eval.bound.examples = 16
    c.eval.fid.update(classifier=CLASSIFIER, num=256)
    c.sample.update(num=10, steps=50, sampler='ddim', eta=0.0, guidance=1.0, guidance_sweep=())
    return c


def shape_overrides(patch, width, depth, heads):
    return {'model.patch': patch, 'model.embed_dim': width, 'model.num_layers': depth,
            'model.num_heads': heads, 'model.mlp_dim': 4 * width}


def schedule(steps, size):
    return {'optim.warmup_steps': min(200, steps // 10),
            'optim.ema_decay': round(min(0.999, 1 - 10 / steps), 6)}


def get_sweep():
    c = base()
    steps_range = (MIN_STEPS, MAX_STEPS)
    patch4 = {name: shape_overrides(*shape) for name, shape in SHAPES.items()}
    patch7 = {name: shape_overrides(*shape) for name, shape in PATCH7.items()}
    return c, (isoflop_runs(c, BUDGETS, patch4, steps_range, schedule, SEED_REPEATS)
               + isoflop_runs(c, (PATCH7_BUDGET,), patch7, steps_range, schedule, group=False))
