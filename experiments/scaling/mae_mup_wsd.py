"""Scaling laws of masked autoencoders with µP and warmup-stable-decay cooldown branches, on
binarized MNIST (50,000 train / 10,000 test images, six times mnist_test's 8,000):

    dul-jax sweep --sweep experiments/scaling/mae_mup_wsd.py --workdir runs/mae_mup_wsd --no-report
    python experiments/mup_wsd.py mae_mup_wsd branches runs/mae_mup_wsd   # the cooldown branches
    python experiments/mup_wsd.py mae_mup_wsd report runs/mae_mup_wsd     # tables, fits, plots

Three parts, all patch-4 MAEs (49 patches, 75% masked, pixel MSE), encoder depth 4 and decoder
depth 2 with the decoder half the encoder's width, so the whole model grows with width (the
earlier study's fixed decoder hid the encoder's size), heads of 16 dims:
  lr_*     the learning rate at the base width 32, under µP the one for every width: 7 rates
           2^-11..2^-5, 600 steps of the wsd schedule (20% 1-sqrt decay); then width 128 at
           the three rates around that optimum, the transfer check (`lr_w128_*`);
  stable_* one stable-phase run (wsd, no decay) per width 32, 64, 96, 128, 192 (N 0.06M to
           2M) at the transferred rate, 2,000 steps, a checkpoint kept every 250: `branches`
           cools each down from steps 250, 500, 1,000 and 2,000 (x8 in data) over k/5 steps
           (1-sqrt, Hägele et al. 2024), so each width gives four data budgets and the study
           spans 2.3 decades of compute;
  cosine_* full cosine runs of width 64 at 600 and 2,400 steps, three seeds each, against the
           branches of the same total length (the paper's claim), with the stable run of width
           64 repeated with seeds 1 and 2 (branched at 500 and 2,000) for the branches' spread.
AdamW (b2 0.95, weight decay 0 under µP: its rates are per layer), batch 32, warm-up 100 steps,
decay to 10% of the rate. At most 76,800 images are seen (1.5 epochs): every run sees fresh
data. The loss is the masked-patch MSE on all 10,000 test images.
"""

import os

from dul_jax.config import load_config
from dul_jax.scaling.sweep import SweepRun

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE_WIDTH = 32
WIDTHS = (32, 64, 96, 128, 192)
LR_OCTAVES = range(-11, -4)            # 2^-11 .. 2^-5
LR_STEPS = 600
LR_CHECK_WIDTH = 128
LR_CHECK_OCTAVES = (-9, -8, -7)        # around width 32's optimum
STABLE_STEPS, CKPT_EVERY = 2000, 250
BRANCH_STEPS = (250, 500, 1000, 2000)   # k; each branch decays over the next k/5 steps
DECAY_FRACTION_OF_K = 0.2
SEEDED_WIDTH, SEEDS = 64, (1, 2)
SEEDED_BRANCH_STEPS = (500, 2000)   # the seeds' branches: the two points of the noise floor
COSINE_STEPS = (600, 2400)             # the lengths k + k/5 of the seeds' branches
# the base rate, from the lr_* runs: the grid's best (the parabola vertex is 2^-7.76; the longer
# runs lean to the lower side); None lists the lr_* runs only, the first phase
LR = 2.0 ** -8

REPORT = {'units': 'masked-patch MSE', 'literature': False,
          'title': 'MAE with µP and cooldown branches (binarized MNIST)'}


def shape(width):
    return {'model.embed_dim': width, 'model.num_heads': width // 16,
            'model.mlp_dim': 4 * width, 'model.decoder_embed_dim': width // 2,
            'model.decoder_heads': max(1, width // 32), 'model.decoder_mlp_dim': 2 * width}


def base():
    c = load_config(os.path.join(HERE, 'configs', 'mae_mnist.py'))
    c.data.name = 'binarized_mnist'
    c.model.update(num_layers=4, decoder_layers=2, mup_base_width=BASE_WIDTH)
    c.optim.update(lr=LR or 1e-3, min_lr_ratio=0.1, warmup_steps=100, weight_decay=0.0,
                   schedule='wsd', decay_fraction=0.2, decay_shape='1-sqrt')
    c.train.update(batch_size=32, log_every=250, eval_every=0, ckpt_every=CKPT_EVERY,
                   sample_every=0, keep_checkpoints=1)
    c.eval.update(batch_size=500, max_examples=0, evaluators=())
    c.sample.num = 10
    # the runs of one width share their eval programs: compile them once
    c.runtime.compilation_cache = '~/.cache/dul_jax/xla_cpu'
    return c


def stable(width, seed=0):
    return SweepRun(f'stable_w{width}' + (f'_s{seed}' if seed else ''), {
        **shape(width), 'train.steps': STABLE_STEPS, 'optim.decay_fraction': 0.0,
        'train.keep_checkpoints': STABLE_STEPS // CKPT_EVERY, **({'seed': seed} if seed else {})})


def get_sweep():
    c = base()
    runs = [SweepRun(f'lr_w{BASE_WIDTH}_2^{k}', {**shape(BASE_WIDTH), 'optim.lr': 2.0 ** k,
                                                 'train.steps': LR_STEPS})
            for k in LR_OCTAVES]
    if LR is None:
        return c, runs
    # the stable runs first: their branches can train while the rest of the sweep does
    runs += [stable(width) for width in WIDTHS]
    runs += [stable(SEEDED_WIDTH, seed) for seed in SEEDS]
    runs += [SweepRun(f'lr_w{LR_CHECK_WIDTH}_2^{k}', {**shape(LR_CHECK_WIDTH),
                                                     'optim.lr': 2.0 ** k,
                                                     'train.steps': LR_STEPS})
             for k in LR_CHECK_OCTAVES]
    runs += [SweepRun(f'cosine_w{SEEDED_WIDTH}_{steps}' + (f'_s{seed}' if seed else ''), {
        **shape(SEEDED_WIDTH), 'train.steps': steps, 'optim.schedule': 'cosine',
        **({'seed': seed} if seed else {})})
        for steps in COSINE_STEPS for seed in (0, *SEEDS)]
    return c, runs
