"""PacGAN on the 25 Gaussians (Lin et al. 2018, their 2-D grid experiment's settings): the
non-saturating loss, a discriminator that judges packs of 2 samples (`model.pack`), a 2-D latent,
MLP players 4 x 400 (theirs: generator 4 x 400 with batch norm, as here; discriminator 3 x 200
maxout units of 5 pieces, here the same 4 x 400 leaky-ReLU MLP as the generator), Adam(1e-4,
beta1 0.8), batch 100, 100,000 generator steps (theirs: 400 epochs of 100,000 points, 400,000).
--config.model.pack=1 is the unpacked GAN of the same settings.
Measured: experiments/results/gan_grid25 (modes covered at 100k and 200k steps)."""

import os

from dul_jax.config import load_config


def get_config():
    c = load_config(os.path.join(os.path.dirname(__file__), 'gan_grid25.py'))
    c.model.update(loss='non_saturating', spectral_norm=False, pack=2, width=400, depth=4, z_dim=2)
    c.optim.b1 = 0.8
    c.train.update(steps=100000, batch_size=100, log_every=5000, eval_every=25000,
                   sample_every=25000, ckpt_every=25000)
    return c
