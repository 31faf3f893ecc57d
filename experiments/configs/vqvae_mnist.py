"""VQ-VAE on 28x28 MNIST (`mnist_test`: train 8,000 / test 2,000, 256 levels): two stride-2 stages
to a 7x7 grid of 128 codes of dimension 32, two residual blocks, a discretized logistic mixture
decoder. The prior over its codes: experiments/configs/vqvae_prior.py (see
experiments/vqvae_two_stage.py for the two-stage recipe).
Measured (shared 2-core CPU, loaded; a short run, not the 3000 steps here): with
--config.train.steps=600 (7.5 min), on the 2,000 test images: decoder -log p(x|z_q) 1.57 bits/dim
(853 nats/image), MSE of the decoder's mean 0.0133, codebook perplexity 5.4 of 128 (collapse: no
EMA codebook or dead-code restarts yet). The prior (vqvae_prior.py, stopped at step 540, 8 min):
0.787 nats/code, 38.6 nats per 7x7 grid, so -log p(x) <= 853 + 38.6 = 892 nats/image (1.64
bits/dim; q(z|x) is a point mass, entropy 0). Two-stage samples: domain FID 19.8 on 1,000 images
(real 4.2, Gaussian fit 127.7; classifier of 1,000 steps, test accuracy 0.952).
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
