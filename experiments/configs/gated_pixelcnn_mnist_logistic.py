"""Gated PixelCNN with a PixelCNN++ discretized logistic mixture output on 256-level MNIST
(`mnist_test`: the MNIST test set split 8,000 train / 2,000 test): reports bits/dim.

Each pixel's 256 levels come from 5 logistics (15 numbers) instead of 256 logits, so nearby gray
levels share probability mass; the edge bins 0 and 255 take the tails, where MNIST's background
and stroke pixels sit.
"""

from dul_jax import model_configs
from dul_jax.config import base_config


def get_config():
    c = base_config()
    c.task = 'pixelcnn'
    c.data.name = 'mnist_test'
    c.model = model_configs.pixelcnn()
    c.model.kind = 'gated'
    c.model.output = 'logistic_mixture'
    c.model.num_mixtures = 5
    c.model.hidden = 32
    c.model.num_layers = 10
    c.model.first_kernel_size = 7
    c.optim.lr = 2e-3
    c.optim.warmup_steps = 200
    c.optim.ema_decay = 0.999
    c.train.steps = 3000
    c.train.batch_size = 32
    c.train.log_every = 100
    c.train.eval_every = 1000
    c.train.ckpt_every = 500
    c.eval.batch_size = 250
    c.eval.max_examples = 0
    c.sample.num = 16
    c.mesh.rules = (('conv_in', 'fsdp'),)   # ZeRO-3 for convolutions (a no-op while fsdp=1)
    return c
