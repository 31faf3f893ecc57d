"""VQ-VAE on scikit-learn's 8x8 digits (17 levels): one stride-2 stage to a 4x4 grid of 32 codes,
a discretized logistic mixture decoder; tiny, trains in a minute or two on the CPU. The prior over
its codes: experiments/configs/vqvae_prior.py after `experiments/vqvae_two_stage.py export-codes`.
Measured (shared CPU, --config.train.steps=500, 1 min): test decoder 1.68 bits/dim, MSE 0.0133,
codebook perplexity 13.2 of 32.
"""

from dul_jax import model_configs
from dul_jax.config import base_config


def get_config():
    c = base_config()
    c.task = 'vqvae'
    c.data.name = 'digits'
    c.model = model_configs.vqvae()
    c.model.stages = 1
    c.model.hidden = 32
    c.model.res_channels = 16
    c.model.res_blocks = 1
    c.model.code_dim = 16
    c.model.num_codes = 32
    c.model.codebook_update = 'ema'   # running averages, and restarts of unused codes
    c.model.restart_threshold = 1.0
    c.model.mixtures = 3
    c.optim.lr = 2e-3
    c.optim.warmup_steps = 100
    c.train.steps = 2000
    c.train.batch_size = 64
    c.train.log_every = 100
    c.train.eval_every = 500
    c.train.ckpt_every = 1000
    c.train.sample_every = 1000
    c.eval.batch_size = 256
    c.eval.max_examples = 0
    c.sample.num = 20
    return c
