"""Masked autoencoder on 8x8 digits: patch 2 (a 4x4 grid of 16 patches), 75% masked.

Encoder 4x128 on the 4 visible patches plus a cls token, decoder 2x64 on all 16 (0.9M params).
Ends with a linear probe and cosine 20-NN on the frozen cls features (train 1,500 / test 297).
Measured (11 min on the shared 2-core CPU): test loss 0.041, linear probe 0.960, 20-NN 0.950;
the same encoder at initialisation: 0.939 and 0.667; raw pixels: 0.966 and 0.973.
"""

from dul_jax import model_configs
from dul_jax.config import base_config


def get_config():
    c = base_config()
    c.task = 'mae'
    c.data.name = 'digits'
    c.model = model_configs.mae()
    c.model.patch_size = 2
    c.optim.lr = 1e-3
    c.optim.warmup_steps = 100
    c.optim.weight_decay = 0.05
    c.optim.b2 = 0.95
    c.train.steps = 2000
    c.train.batch_size = 128
    c.train.log_every = 100
    c.train.eval_every = 500
    c.train.ckpt_every = 1000
    c.train.sample_every = 500
    c.eval.batch_size = 128
    c.eval.max_examples = 0
    c.eval.evaluators = ('probe',)
    c.sample.num = 20
    return c
