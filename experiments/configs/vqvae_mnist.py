"""VQ-VAE on 28x28 MNIST (`mnist_test`: train 8,000 / test 2,000, 256 levels): two stride-2 stages
to a 7x7 grid of 128 codes of dimension 32, two residual blocks, a discretized logistic mixture
decoder. The prior over its codes: experiments/configs/vqvae_prior.py (see
experiments/vqvae_two_stage.py for the two-stage recipe).
Measured (this config, 12 min 21 s on the 2-core CPU beside a toy GAN run), on the 2,000 test
images: decoder -log p(x|z_q) 1.240 bits/dim (674 nats/image), MSE of the decoder's mean 0.0041,
codebook perplexity 106 of 128. The prior (vqvae_prior.py on its codes, 3,000 steps): 94.3 nats
per 7x7 grid, so -log p(x) <= 768 nats/image (1.41 bits/dim). Two-stage samples: domain FID 17.66
on 1,000 images (real 5.10, Gaussian fit 138.9). experiments/results/vqvae_mnist compares the
codebook loss without EMA or restarts.
"""

from dul_jax import model_configs
from dul_jax.config import base_config


def get_config():
    c = base_config()
    c.task = 'vqvae'
    c.data.name = 'mnist_test'
    c.model = model_configs.vqvae()
    c.model.stages = 2
    c.model.hidden = 64
    c.model.res_channels = 32
    c.model.res_blocks = 2
    c.model.code_dim = 32
    c.model.num_codes = 128
    c.model.codebook_update = 'ema'   # running averages, and restarts of unused codes
    c.model.restart_threshold = 1.0
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
