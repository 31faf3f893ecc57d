"""A class-conditional hinge-loss SNGAN on MNIST (`mnist_test`'s 8,000 train images, 256 levels),
sized for about an hour on a 2-core CPU: a DCGAN-style generator (7x7 -> 14x14 -> 28x28) and
SNGAN's standard CNN discriminator with a projection head, both 32 channels wide, one
discriminator update per generator update, EMA of the generator. Score it with the domain FID
(experiments/results/gan_mnist):
`python experiments/domain_fid.py score --workdir RUN --classifier DIR --num 1000`."""

from dul_jax import model_configs
from dul_jax.config import base_config


def get_config():
    c = base_config()
    c.task = 'gan'
    c.data.name = 'mnist_test'
    c.model = model_configs.gan()
    c.model.update(arch='conv', loss='hinge', spectral_norm=True, z_dim=64, g_channels=32,
                   d_channels=32, class_conditional=True)
    # SNGAN's Adam(2e-4, 0.5, 0.999) at n_dis = 1, for both players
    c.optim.update(lr=2e-4, b1=0.5, b2=0.999, warmup_steps=0, schedule='constant',
                   weight_decay=0.0, clip_norm=0.0, ema_decay=0.999)
    c.optim.groups = model_configs.gan_optimizer_groups(2e-4, 2e-4)
    c.train.update(steps=8000, batch_size=64, log_every=100, eval_every=0, ckpt_every=1000,
                   sample_every=2000)
    c.eval.batch_size = 500
    c.eval.max_examples = 500
    c.sample.num = 100
    return c
