"""µP's learning-rate transfer, the classic check (Yang et al. 2022, Fig. 1): iGPT on scikit-learn's
8x8 digits at widths 32 to 256 (2 layers, heads of 16), each trained at eight learning rates, in
the standard parametrization and in µP with base width 32. Under µP the best learning rate of
width 32 should be the best at every width; in the standard one it should drift down as width
grows. 64 short runs, about an hour on a 2-core CPU, then 20 with a second seed around the
optima of widths 32, 64 and 256 (the seed spread, to tell a drift from noise):

    dul-jax sweep --sweep experiments/sweeps/mup_transfer_digits.py \\
        --workdir runs/mup_transfer_digits --no-report
    python experiments/mup_transfer.py runs/mup_transfer_digits
"""

from dul_jax import model_configs
from dul_jax.config import base_config
from dul_jax.scaling.sweep import SweepRun

WIDTHS = (32, 64, 128, 256)
LEARNING_RATES = tuple(2.0 ** k for k in range(-11, -3))   # 4.9e-4 to 6.3e-2
BASE_WIDTH = 32
# (parametrization, width) -> the octaves (log2 lr) rerun with seed 1: 4 around each optimum of
# the first seed (width 32 is the same model in both parametrizations, so it is run once)
SEED_1 = {('sp', 32): range(-8, -4), ('sp', 64): range(-9, -5), ('sp', 256): range(-10, -6),
          ('mup', 64): range(-9, -5), ('mup', 256): range(-8, -4)}


def get_sweep():
    c = base_config()
    c.data.name = 'digits'
    c.model = model_configs.autoregressive()
    c.model.num_layers = 2
    c.model.scan_unroll = 0
    c.optim.warmup_steps = 20
    c.optim.min_lr_ratio = 0.1
    c.optim.weight_decay = 0.0     # µP's rates are per layer; decay would add its own scale
    c.train.update(steps=200, batch_size=32, log_every=100, eval_every=0, ckpt_every=200,
                   keep_checkpoints=1)
    c.eval.max_examples = 0
    c.sample.num = 2
    base = {'mup': BASE_WIDTH, 'sp': 0}

    def run(parametrization, width, lr, seed=0):
        return SweepRun(f'{parametrization}_w{width}_lr{lr:.2e}' + (f'_s{seed}' if seed else ''), {
            'model.embed_dim': width, 'model.mlp_dim': 4 * width, 'model.num_heads': width // 16,
            'model.mup_base_width': base[parametrization], 'optim.lr': lr,
            **({'seed': seed} if seed else {})})

    runs = [run(p, width, lr) for p in ('mup', 'sp') for width in WIDTHS for lr in LEARNING_RATES]
    runs += [run(p, width, 2.0 ** k, seed=1) for (p, width), octaves in SEED_1.items()
             for k in octaves]
    return c, runs
