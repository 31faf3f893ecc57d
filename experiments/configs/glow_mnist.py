"""Glow on 28x28 MNIST (`mnist_test`: train 8,000 / test 2,000, 256 levels), uniform
dequantization, sized to train in about an hour on the 2-core CPU.

Two scales: squeeze to 14x14x4, 8 steps of actnorm, invertible 1x1 conv and affine coupling,
half factored out, squeeze to 7x7x8, 8 more steps; coupling nets of 48 channels with one
residual block. The logit's alpha is 1e-6, as MAF and FFJORD use on MNIST.
"""

from dul_jax import model_configs
from dul_jax.config import base_config


def get_config():
    c = base_config()
    c.task = 'flow'
    c.data.name = 'mnist_test'
    c.model = model_configs.flow()
    c.model.kind = 'glow'
    c.model.scales = 2
    c.model.steps = 8
    c.model.hidden = 48
    c.model.blocks = 1
    c.model.scale_fn = 'sigmoid'
    c.model.logit_alpha = 1e-6
    c.optim.lr = 1e-3
    c.optim.warmup_steps = 200
    c.optim.weight_decay = 0.0
    c.optim.clip_norm = 100.0
    c.optim.ema_decay = 0.999
    c.train.steps = 6000
    c.train.batch_size = 32
    c.train.log_every = 100
    c.train.eval_every = 2000
    c.train.ckpt_every = 500
    c.train.sample_every = 2000
    c.eval.batch_size = 200
    c.eval.max_examples = 0
    c.eval.evaluators = ()
    c.sample.num = 40
    return c
