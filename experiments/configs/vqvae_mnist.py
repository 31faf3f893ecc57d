"""VQ-VAE on 28x28 MNIST (`mnist_test`: train 8,000 / test 2,000, 256 levels): two stride-2 stages
to a 7x7 grid of 128 codes of dimension 32, two residual blocks, a discretized logistic mixture
decoder. The prior over its codes: experiments/configs/vqvae_prior.py (see
experiments/vqvae_two_stage.py for the two-stage recipe).
"""

from dul_jax.config import base_config
from dul_jax.tasks.vqvae import default_model_config


def get_config():
    c = base_config()
    c.task = 'vqvae'
    c.data.name = 'mnist_test'
    c.model = default_model_config()
    c.model.stages = 2
    c.model.hidden = 64
    c.model.res_channels = 32
    c.model.res_blocks = 2
    c.model.code_dim = 32
    c.model.num_codes = 128
    c.optim.lr = 1e-3
    c.optim.warmup_steps = 100
    c.train.steps = 3000
    c.train.batch_size = 64
    c.train.log_every = 100
    c.train.eval_every = 500
    c.train.ckpt_every = 1000
    c.train.sample_every = 1000
    c.eval.batch_size = 200
    c.eval.max_examples = 0
    c.sample.num = 20
    return c
