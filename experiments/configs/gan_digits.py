"""A small hinge-loss SNGAN on scikit-learn's 8x8 digits (17 levels): the base of the GAN tests,
and a quick look at the family on the CPU."""

from dul_jax import model_configs
from dul_jax.config import base_config


def get_config():
    c = base_config()
    c.task = 'gan'
    c.data.name = 'digits'
    c.model = model_configs.gan()
    c.model.update(arch='conv', loss='hinge', spectral_norm=True, z_dim=32, g_channels=32,
                   d_channels=32)
    c.optim.update(lr=2e-4, b1=0.5, b2=0.999, warmup_steps=0, schedule='constant',
                   weight_decay=0.0, clip_norm=0.0, ema_decay=0.999)
    c.optim.groups = model_configs.gan_optimizer_groups(2e-4, 2e-4)
    c.train.update(steps=3000, batch_size=64, log_every=100, eval_every=0, ckpt_every=1000)
    c.eval.batch_size = 256
    c.sample.num = 100
    return c
