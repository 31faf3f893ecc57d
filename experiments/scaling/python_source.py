"""Scaling laws of byte-level GPTs on the Python standard library's source (`python_source`:
11.5M training bytes, 592k validation bytes), reproducible on a 2-core CPU with one command:

    dul-jax sweep --sweep experiments/scaling/python_source.py --workdir runs/scaling_python_source

Eleven shapes from 1 layer x 16 wide to 6 x 192 (7.7k to 2.7M non-embedding parameters, 355x),
trained at four compute budgets (3e11, 1e12, 3e12 and 1e13 FLOPs; IsoFLOP groups of 6-7 sizes):
26 runs. Each run's steps are its budget divided by its FLOPs per step (6N + 12LTd per token,
dul_jax/scaling/accounting.py), so D = C / (FLOPs per token). A size enters a budget only if that
is between 128 steps and one epoch of the training bytes, so no run repeats data.
Learning rate from Kaplan et al. 2020 (eq. D.1: 0.003239 - 0.0001395 ln N), cosine decay to 10%
over each run's own length (Chinchilla's point: a schedule longer than the run biases its loss).
Every run is evaluated on the same first 1,024 validation windows (131k bytes).
"""

from dul_jax import model_configs
from dul_jax.config import base_config
from dul_jax.scaling.sweep import isoflop_runs, kaplan_learning_rate

SEQ_LEN, BATCH = 128, 16
TRAIN_BYTES = 11_526_191
BUDGETS = (3e11, 1e12, 3e12, 1e13)
SHAPES = {  # name: (layers, width, heads)
    'L1_d16': (1, 16, 2),
    'L1_d24': (1, 24, 2),
    'L1_d32': (1, 32, 2),
    'L2_d32': (2, 32, 2),
    'L2_d48': (2, 48, 3),
    'L2_d64': (2, 64, 4),
    'L3_d64': (3, 64, 4),
    'L4_d96': (4, 96, 4),
    'L4_d128': (4, 128, 4),
    'L5_d160': (5, 160, 5),
    'L6_d192': (6, 192, 6),
}
MIN_STEPS = 128


def base():
    c = base_config()
    c.data.name = 'python_source'
    c.data.seq_len = SEQ_LEN
    c.model = model_configs.autoregressive()
    c.model.scan_unroll = 0       # unrolled, as the published sweep ran: the faster CPU step
    c.optim.min_lr_ratio = 0.1
    c.train.batch_size = BATCH
    c.train.log_every = 50
    c.train.eval_every = 0            # one eval, at the end
    c.train.ckpt_every = 500          # a killed sweep resumes mid-run
    c.train.keep_checkpoints = 1
    c.eval.batch_size = 128
    c.eval.max_examples = 1024
    c.sample.num = 1
    return c


def shape_overrides(layers, width, heads):
    return {'model.num_layers': layers, 'model.embed_dim': width, 'model.num_heads': heads,
            'model.mlp_dim': 4 * width}


def get_sweep():
    c = base()
    shapes = {name: shape_overrides(*shape) for name, shape in SHAPES.items()}

    def schedule(steps, size):
        return {'optim.lr': round(kaplan_learning_rate(size['N']), 6),
                'optim.warmup_steps': min(200, steps // 10)}
    max_steps = TRAIN_BYTES // (SEQ_LEN * BATCH)   # one epoch: no run repeats data
    return c, isoflop_runs(c, BUDGETS, shapes, (MIN_STEPS, max_steps), schedule)
