"""RealNVP on 28x28 MNIST (`mnist_test`: train 8,000 / test 2,000, 256 levels), uniform
dequantization, sized to train in about an hour on the 2-core CPU.

Two scales: 3 checkerboard couplings at 28x28x1, squeeze, 3 channel couplings at 14x14x4, half
factored out, then 4 checkerboard couplings at 14x14x2 (Dinh et al.'s plan); coupling nets of 32
channels with one residual block (theirs: 64 channels, 8 blocks; about 30x the compute). The
logit's alpha is 1e-6, as MAF and FFJORD use on MNIST.
"""

from dul_jax.config import base_config
from dul_jax.tasks.flow import default_model_config


def get_config():
    c = base_config()
    c.task = 'flow'
    c.data.name = 'mnist_test'
    c.model = default_model_config()
    c.model.kind = 'realnvp'
    c.model.scales = 2
    c.model.steps = 3
    c.model.hidden = 32
    c.model.blocks = 1
    c.model.logit_alpha = 1e-6
    c.optim.lr = 1e-3
    c.optim.warmup_steps = 200
    c.optim.weight_decay = 0.0
    c.optim.clip_norm = 100.0
    c.optim.ema_decay = 0.999
    c.train.steps = 4000
    c.train.batch_size = 32
    c.train.log_every = 100
    c.train.eval_every = 1000
    c.train.ckpt_every = 500
    c.train.sample_every = 2000
    c.eval.batch_size = 200
    c.eval.max_examples = 0
    c.eval.evaluators = ()
    c.sample.num = 40
    return c
