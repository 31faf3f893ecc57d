"""iGPT on 8x8 digits (17 levels, raster order, 64 tokens), unconditional: reports bits/dim."""

from dul_jax import model_configs
from dul_jax.config import base_config


def get_config():
    c = base_config()
    c.data.name = 'digits'
    c.model = model_configs.autoregressive()
    c.model.num_layers = 4
    c.model.scan_unroll = 0       # unrolled: the faster step for a few layers on the CPU
    c.model.embed_dim = 128
    c.model.mlp_dim = 512
    c.model.dropout = 0.1
    c.optim.lr = 1e-3
    c.optim.ema_decay = 0.995
    c.train.steps = 3000
    c.train.batch_size = 64
    c.train.eval_every = 1000
    c.train.ckpt_every = 1000
    c.eval.max_examples = 0
    c.sample.num = 64
    return c
