"""What every diffusion config starts from: the diffusion task's model defaults, EMA, the
sampler's keys, and the variational bound as the end-of-run evaluation. On its own it trains the
default U-Net on digits; the other diffusion configs load it and change what they need."""

from dul_jax import model_configs
from dul_jax.config import base_config


def get_config():
    c = base_config()
    c.task = 'diffusion'
    c.data.name = 'digits'
    c.model = model_configs.diffusion()
    c.optim.ema_decay = 0.999
    c.sample.sampler = 'ddim'         # 'ddim' (eta below) or 'ddpm' (ancestral)
    c.sample.steps = 100              # sampling steps on an even grid of 1..T; 0: all T
    c.sample.eta = 0.0                # DDIM noise: 0 deterministic, 1 = DDPM's posterior noise
    c.sample.guidance = 1.0           # classifier-free guidance scale (1: plain conditional)
    c.sample.guidance_sweep = ()      # scales for an extra grid: rows = scales, columns = classes
    c.sample.clip_x0 = True           # clip predicted x_0 to [-1, 1] at every step
    c.eval.evaluators = ('bound',)    # the variational bound in bits/dim
    c.eval.bound.examples = 256       # T network passes per image: the bound is costly
    return c
