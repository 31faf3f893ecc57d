"""`dit_mnist.py` cut to train within about half an hour on a 2-core CPU: patch 4 on 28x28
(49 tokens instead of 196), width 128 instead of 256, float32, 4,000 steps at batch 64; the same
diffusion (v-prediction, min-SNR-5, cosine schedule), conditioning and guidance."""

import os

from dul_jax.config import load_config


def get_config():
    c = load_config(os.path.join(os.path.dirname(__file__), 'dit_mnist.py'))
    c.model.update(patch=4, embed_dim=128, mlp_dim=512, dtype='float32')  # bf16 is slow on CPU
    c.optim.update(lr=1e-3, warmup_steps=200, ema_decay=0.999)  # 0.999^4000: 2% of init left
    c.train.update(steps=4000, batch_size=64, log_every=100, eval_every=0, ckpt_every=1000)
    c.eval.batch_size = 250
    c.eval.bound.examples = 64  # the bound costs 1000 passes per image
    return c
