"""The lecture's toy: a GAN on the 2-D mixture of 25 Gaussians on a 5x5 grid (VEEGAN, PacGAN),
where mode coverage is measurable (the `modes` evaluator, on 2,500 samples). MLP players of
3 x 256 units; hinge loss with spectral norm by default. The other two losses of
experiments/results/gan_grid25's table:
  --config.model.loss=non_saturating --config.model.spectral_norm=False
  --config.model.loss=wasserstein --config.model.spectral_norm=False
      --config.model.gradient_penalty=10 --config.model.d_steps=5 --config.train.batch_size=1280
(--config.data.name=toy:ring8 for the ring of 8.)"""

from dul_jax import model_configs
from dul_jax.config import base_config


def get_config():
    c = base_config()
    c.task = 'gan'
    c.data.name = 'toy:grid25'
    c.model = model_configs.gan()
    c.model.update(arch='mlp', loss='hinge', spectral_norm=True, z_dim=16, width=256, depth=3)
    # WGAN-GP's toy settings: Adam(1e-4, 0.5, 0.9)
    c.optim.update(lr=1e-4, b1=0.5, b2=0.9, warmup_steps=0, schedule='constant',
                   weight_decay=0.0, clip_norm=0.0)
    c.optim.groups = model_configs.gan_optimizer_groups(1e-4, 1e-4)
    c.train.update(steps=20000, batch_size=256, log_every=500, eval_every=0, ckpt_every=5000)
    c.eval.batch_size = 1000   # GANs have no per-example eval metrics: this pass is cheap
    c.eval.max_examples = 1000
    c.eval.evaluators = ('modes',)
    c.sample.num = 2500
    return c
