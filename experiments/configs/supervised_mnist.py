"""The supervised baseline of the contrastive table: simclr_mnist.py's encoder, augmentations,
data and schedule, trained with labels (cross-entropy through a linear head on one view), then
probed like the self-supervised encoders. 750 steps (a quarter of SimCLR's training FLOPs).
Measured (15 min on the shared CPU): test accuracy 0.988, linear probe 0.988, 20-NN 0.991."""

import os

from dul_jax.config import load_config


def get_config():
    c = load_config(os.path.join(os.path.dirname(__file__), 'simclr_mnist.py'))
    c.model.method = 'supervised'
    c.train.steps = 750
    return c
