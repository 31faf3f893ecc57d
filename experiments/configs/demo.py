"""The `make demo` run: a class-conditional iGPT on scikit-learn's 8x8 digits (17 gray levels).

Every pixel is one token; the model learns p(pixel | pixels before it, digit class). Small enough
to train in about two minutes on a 2-core CPU; samples are a PNG grid, one column per class.
"""

from dul_jax import model_configs
from dul_jax.config import base_config


def get_config():
    c = base_config()
    c.data.name = 'digits'
    c.model = model_configs.autoregressive()
    c.model.num_layers = 3
    c.model.scan_unroll = 0       # unrolled: the faster step for a few layers on the CPU
    c.model.num_heads = 4
    c.model.embed_dim = 128
    c.model.mlp_dim = 512
    c.model.dropout = 0.1              # 1,500 training images: regularise
    c.model.class_conditional = True
    c.optim.lr = 2e-3
    c.optim.warmup_steps = 100
    c.optim.ema_decay = 0.99
    c.train.steps = 800
    c.train.batch_size = 64
    c.train.log_every = 50
    c.train.eval_every = 400
    c.train.ckpt_every = 400
    c.eval.max_examples = 0
    c.sample.num = 40                  # four per class
    return c
