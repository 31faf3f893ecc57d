"""SimCLR on scikit-learn's 8x8 digits with a small ResNet: the base of the contrastive tests and a
quick look at the family on the CPU (`--config.model.method=byol` or `supervised` for the others).
Ends with a linear probe and cosine 20-NN on the frozen encoder's features."""

from dul_jax import model_configs
from dul_jax.config import base_config


def get_config():
    c = base_config()
    c.task = 'contrastive'
    c.data.name = 'digits'
    c.model = model_configs.contrastive()
    c.model.update(width=16, blocks=(1, 1), head_hidden=128, head_dim=64)
    c.model.augment.update(crop_scale=(0.5, 1.0), blur_sigma=(0.1, 1.0))
    c.optim.update(lr=1e-3, warmup_steps=50, weight_decay=1e-4)
    c.train.update(steps=1000, batch_size=128, log_every=100, eval_every=500, ckpt_every=500,
                   sample_every=500)
    c.eval.update(batch_size=128, max_examples=0, evaluators=('probe',))
    c.sample.num = 20
    return c
