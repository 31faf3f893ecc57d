"""Masked autoencoder on 28x28 MNIST (`mnist_test`: train 8,000 / test 2,000 with labels).

Patch 4 (a 7x7 grid of 49 patches), 75% masked (37 patches): the encoder sees 12 patches plus a
cls token. Ends with a linear probe and cosine 20-NN on the frozen cls features.
Measured (11.5 min on the shared 2-core CPU): test loss 0.051, linear probe 0.925, 20-NN 0.852;
the same encoder at initialisation: 0.858 and 0.542; raw pixels: 0.903 and 0.961.
"""

from dul_jax import model_configs
from dul_jax.config import base_config


def get_config():
    c = base_config()
    c.task = 'mae'
    c.data.name = 'mnist_test'
    c.model = model_configs.mae()
    c.model.patch_size = 4
    c.optim.lr = 1e-3
    c.optim.warmup_steps = 100
    c.optim.weight_decay = 0.05
    c.optim.b2 = 0.95
    c.train.steps = 1500
    c.train.batch_size = 64
    c.train.log_every = 100
    c.train.eval_every = 500
    c.train.ckpt_every = 1000
    c.train.sample_every = 500
    c.eval.batch_size = 200
    c.eval.max_examples = 0
    c.eval.evaluators = ('probe',)
    c.sample.num = 20
    return c
