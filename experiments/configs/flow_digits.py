"""Glow on scikit-learn's 8x8 digits (17 levels) with variational dequantization: a small flow
that trains in a few minutes on the CPU (and the base of the flow tests)."""

from dul_jax import model_configs
from dul_jax.config import base_config


def get_config():
    c = base_config()
    c.task = 'flow'
    c.data.name = 'digits'
    c.model = model_configs.flow()
    c.model.kind = 'glow'
    c.model.scales = 2
    c.model.steps = 4
    c.model.hidden = 32
    c.model.blocks = 1
    c.model.scale_fn = 'sigmoid'
    c.model.dequantization = 'variational'
    c.model.dequantizer_steps = 2
    c.model.dequantizer_hidden = 16
    c.optim.lr = 1e-3
    c.optim.warmup_steps = 100
    c.optim.weight_decay = 0.0
    c.optim.clip_norm = 100.0
    c.train.steps = 2000
    c.train.batch_size = 64
    c.train.log_every = 100
    c.train.eval_every = 500
    c.train.ckpt_every = 500
    c.train.sample_every = 1000
    c.eval.batch_size = 256
    c.eval.max_examples = 0
    c.eval.evaluators = ('iwae',)
    c.eval.iwae.k = 100
    c.eval.iwae.chunk = 50
    c.eval.iwae.batch_size = 64
    c.sample.num = 40
    return c
