"""Scaling laws of diffusion transformers (DiT) with µP and warmup-stable-decay cooldown branches,
on binarized MNIST (50,000 train / 10,000 test images; the earlier DiT study's 8,000 grayscale
images ran out: its compute-optimal runs repeated them for tens of epochs):

    dul-jax sweep --sweep experiments/scaling/dit_mup_wsd.py --workdir runs/dit_mup_wsd --no-report
    python experiments/mup_wsd.py dit_mup_wsd branches runs/dit_mup_wsd   # the cooldown branches
    python experiments/mup_wsd.py dit_mup_wsd report runs/dit_mup_wsd     # tables, fits, plots

The MAE study's design (mae_mup_wsd.py) on patch-4 DiTs (49 tokens), depth 4, heads of 16 dims,
unconditional (binarized MNIST has no labels), the diffusion of dit_mnist_cpu.py (cosine
schedule, T = 1000, v-prediction, min-SNR-5 weighting):
  lr_*     the learning rate at the base width 32, under µP the one for every width: 8 rates
           2^-11..2^-4, 600 steps of the wsd schedule (20% 1-sqrt decay); then width 128 at the
           three rates around that optimum, the transfer check (`lr_w128_*`);
  stable_* one stable-phase run per width 32, 64, 96, 128, 192 (N 0.08M to 2.8M) at the
           transferred rate, 2,000 steps, branched at 250, 500, 1,000 and 2,000 with a 1-sqrt
           decay over k/5 steps;
  cosine_* full cosine runs of width 64 at 600 and 2,400 steps, three seeds each, against the
           branches of the same length, with width 64's stable run repeated with seeds 1 and 2.
  lr_sp_*  the same lr runs in the standard parametrization (model.mup_base_width=0) at widths 64
           and 128, for the both-ways check: under it the best rate drifts with width.
AdamW (b2 0.95, weight decay 0), batch 32, warm-up 100 steps, decay to 10% of the rate; no EMA
(the cooldown does the averaging, Hägele et al. 2024, and an EMA would lag a short branch
differently from a long one). At most 76,800 images are seen (1.5 epochs). The loss is the
training objective (v-MSE, min-SNR-5 weighted, t uniform) on all 10,000 test images with the
same noise and timesteps for every run.
"""

import os

from dul_jax.config import load_config
from dul_jax.scaling.sweep import SweepRun

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE_WIDTH = 32
WIDTHS = (32, 64, 96, 128, 192)
LR_OCTAVES = range(-11, -3)            # 2^-11 .. 2^-4
LR_STEPS = 600
LR_CHECK_WIDTH = 128
LR_CHECK_OCTAVES = (-7, -6, -5)        # around width 32's optimum
SP_WIDTHS, SP_OCTAVES = (64, 128), range(-10, -4)   # the standard parametrization's lr runs
STABLE_STEPS, CKPT_EVERY = 2000, 250
BRANCH_STEPS = (250, 500, 1000, 2000)   # k; each branch decays over the next k/5 steps
DECAY_FRACTION_OF_K = 0.2
SEEDED_WIDTH, SEEDS = 64, (1, 2)
SEEDED_BRANCH_STEPS = (500, 2000)   # the seeds' branches: the two points of the noise floor
COSINE_STEPS = (600, 2400)             # the lengths k + k/5 of the seeds' branches
# the base rate, from the lr_* runs: the grid's best (the parabola vertex is 2^-5.72); None
# lists the lr_* runs only, the first phase
LR = 2.0 ** -6

REPORT = {'units': 'v-MSE (min-SNR-5 weighted)', 'literature': False,
          'title': 'DiT with µP and cooldown branches (binarized MNIST)'}


def shape(width):
    return {'model.embed_dim': width, 'model.num_heads': width // 16, 'model.mlp_dim': 4 * width}


def base():
    c = load_config(os.path.join(HERE, 'configs', 'dit_mnist_cpu.py'))
    c.data.name = 'binarized_mnist'
    c.model.update(num_layers=4, mup_base_width=BASE_WIDTH, class_conditional=False,
                   label_dropout=0.0)
    c.optim.update(lr=LR or 1e-3, min_lr_ratio=0.1, warmup_steps=100, weight_decay=0.0,
                   ema_decay=0.0, schedule='wsd', decay_fraction=0.2, decay_shape='1-sqrt')
    c.train.update(batch_size=32, log_every=250, eval_every=0, ckpt_every=CKPT_EVERY,
                   sample_every=0, keep_checkpoints=1)
    c.eval.update(batch_size=500, max_examples=0, evaluators=())
    c.sample.update(num=10, steps=50, sampler='ddim', eta=0.0, guidance=1.0, guidance_sweep=())
    # the runs of one width share their eval programs: compile them once
    c.runtime.compilation_cache = '~/.cache/dul_jax/xla_cpu'
    return c


def stable(width, seed=0):
    return SweepRun(f'stable_w{width}' + (f'_s{seed}' if seed else ''), {
        **shape(width), 'train.steps': STABLE_STEPS, 'optim.decay_fraction': 0.0,
        'train.keep_checkpoints': STABLE_STEPS // CKPT_EVERY, **({'seed': seed} if seed else {})})


def lr_run(width, k, standard=False):
    return SweepRun(f'lr_{"sp_" if standard else ""}w{width}_2^{k}', {
        **shape(width), 'optim.lr': 2.0 ** k, 'train.steps': LR_STEPS,
        **({'model.mup_base_width': 0} if standard else {})})


def get_sweep():
    c = base()
    runs = [lr_run(BASE_WIDTH, k) for k in LR_OCTAVES]
    if LR is None:
        return c, runs
    # the stable runs first: their branches can train while the rest of the sweep does
    runs += [stable(width) for width in WIDTHS]
    runs += [stable(SEEDED_WIDTH, seed) for seed in SEEDS]
    runs += [lr_run(LR_CHECK_WIDTH, k) for k in LR_CHECK_OCTAVES]
    runs += [SweepRun(f'cosine_w{SEEDED_WIDTH}_{steps}' + (f'_s{seed}' if seed else ''), {
        **shape(SEEDED_WIDTH), 'train.steps': steps, 'optim.schedule': 'cosine',
        **({'seed': seed} if seed else {})})
        for steps in COSINE_STEPS for seed in (0, *SEEDS)]
    runs += [lr_run(width, k, standard=True) for width in SP_WIDTHS for k in SP_OCTAVES]
    return c, runs
