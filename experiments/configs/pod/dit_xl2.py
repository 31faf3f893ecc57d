"""DiT-XL/2 (Peebles & Xie 2023: 28 blocks of width 1152, 16 heads, patch 2) on the 32x32x4
latents of 256x256 images, class-conditional over 1000 classes, for one node of 8 H100s: 256
latents a step (the paper's batch), bf16 compute.

Data: synthetic latents of that shape, quantised to 256 levels as our image pipeline reads them;
no image autoencoder ships here, so this config sizes and compiles the run rather than
reproducing FID. `target` is the node.
"""

import os

from dul_jax.config import load_config


def get_config():
    c = load_config(os.path.join(os.path.dirname(__file__), '..', 'diffusion_defaults.py'))
    c.target = 'h100:8'
    c.data.name = 'synthetic'
    c.data.synthetic_shape = (32, 32, 4)
    c.data.synthetic_levels = 256
    c.data.synthetic_classes = 1000
    c.model.kind = 'dit'
    c.model.patch = 2
    c.model.embed_dim = 1152
    c.model.num_layers = 28
    c.model.num_heads = 16
    c.model.mlp_dim = 4608
    c.model.prediction = 'eps'
    c.model.dtype = 'bfloat16'
    c.optim.lr = 1e-4
    c.optim.weight_decay = 0.0
    c.optim.warmup_steps = 0
    c.optim.ema_decay = 0.9999
    c.train.steps = 400000
    c.train.batch_size = 256
    c.eval.batch_size = 256
    c.mesh.data = -1
    return c
