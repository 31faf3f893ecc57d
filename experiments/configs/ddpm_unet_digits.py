"""DDPM with a small U-Net on 8x8 digits (17 levels), class-conditional with label dropout for
classifier-free guidance. Reports the bound in bits/dim on the test set; samples by DDIM."""

import os

from dul_jax.config import load_config


def get_config():
    c = load_config(os.path.join(os.path.dirname(__file__), 'diffusion_defaults.py'))
    c.data.name = 'digits'
    c.model.kind = 'unet'
    c.model.schedule = 'cosine'
    c.model.num_steps = 1000
    c.model.prediction = 'eps'
    c.model.weighting = 'eps'
    c.model.label_dropout = 0.1
    c.model.channels = 32
    c.model.channel_mults = (1, 2)     # 8x8 and 4x4
    c.model.num_res_blocks = 2
    c.model.attn_resolutions = (4,)
    c.model.num_heads = 4
    c.model.groups = 8
    c.model.dropout = 0.0              # short runs; try 0.1 for long ones (1,500 images)
    c.optim.lr = 1e-3
    c.optim.warmup_steps = 100
    c.optim.weight_decay = 0.0
    c.optim.ema_decay = 0.995          # 0.995^1800 ~ 1e-4 of the init left in the EMA
    c.train.steps = 1800
    c.train.batch_size = 64
    c.train.log_every = 100
    c.train.eval_every = 600
    c.train.ckpt_every = 600
    c.eval.max_examples = 0
    c.eval.batch_size = 128
    c.eval.bound.examples = 128          # 1000 network passes per image: the bound is costly
    c.sample.num = 40                  # four per class
    c.sample.steps = 100
    c.sample.guidance = 2.0
    c.sample.guidance_sweep = (0.0, 1.0, 2.0, 4.0)
    return c
