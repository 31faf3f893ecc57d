"""The autoregressive prior of a two-stage VQ-VAE: the unchanged `autoregressive` task (a GPT over
the code grid in raster order, one token per code) on the codes that
`experiments/vqvae_two_stage.py export-codes` wrote as an `arrays:` data set (default: those of
runs/vqvae_mnist, a 7x7 grid of 128 codes; pass --config.data.name=arrays:FOLDER for another)."""

from dul_jax import model_configs
from dul_jax.config import base_config


def get_config():
    c = base_config()
    c.task = 'autoregressive'
    c.data.name = 'arrays:runs/vqvae_mnist/codes'
    c.model = model_configs.autoregressive()
    c.model.num_layers = 4
    c.model.scan_unroll = 0       # unrolled: the faster step for a few layers on the CPU
    c.model.num_heads = 4
    c.model.embed_dim = 128
    c.model.mlp_dim = 512
    c.model.dropout = 0.1
    c.optim.lr = 1e-3
    c.optim.warmup_steps = 100
    c.optim.ema_decay = 0.995
    c.train.steps = 3000
    c.train.batch_size = 64
    c.train.log_every = 100
    c.train.eval_every = 1000
    c.train.ckpt_every = 1000
    c.eval.batch_size = 200
    c.eval.max_examples = 0
    c.sample.num = 64
    return c
