"""The sweep machinery on an image model: iGPT (unconditional, raster order) on scikit-learn's 8x8
digits, loss against parameters at a fixed number of training images (600 steps of 32), six widths
from 8 to 96 (about 1k to 240k non-embedding parameters). Minutes on a 2-core CPU:

    dul-jax sweep --sweep experiments/scaling/igpt_digits.py --workdir runs/scaling_igpt_digits

Digits has only 1,500 training images, so the largest models reach the data's limit (the E term
of L(N) = E + A N^-alpha, and overfitting); the report says how far a power law holds here.
"""

from dul_jax import model_configs
from dul_jax.config import base_config
from dul_jax.scaling.sweep import SweepRun, kaplan_learning_rate, measure_overrides

SHAPES = {'L2_d8': (2, 8, 2), 'L2_d16': (2, 16, 2), 'L2_d24': (2, 24, 2), 'L3_d32': (3, 32, 4),
          'L3_d64': (3, 64, 4), 'L4_d96': (4, 96, 4)}


def get_sweep():
    c = base_config()
    c.data.name = 'digits'
    c.model = model_configs.autoregressive()
    c.model.scan_unroll = 0       # unrolled, as the published sweep ran: the faster CPU step
    c.optim.warmup_steps = 60
    c.optim.min_lr_ratio = 0.1
    c.train.update(steps=600, batch_size=32, log_every=100, eval_every=0, ckpt_every=300,
                   keep_checkpoints=1)
    c.eval.max_examples = 0
    c.sample.num = 10
    runs = []
    for name, (layers, width, heads) in SHAPES.items():
        overrides = {'model.num_layers': layers, 'model.embed_dim': width,
                     'model.num_heads': heads, 'model.mlp_dim': 4 * width}
        n = measure_overrides(c, overrides)['N']
        overrides['optim.lr'] = round(kaplan_learning_rate(n), 6)
        runs.append(SweepRun(name, overrides))
    return c, runs
