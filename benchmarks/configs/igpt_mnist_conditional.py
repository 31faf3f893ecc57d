"""A class-conditional iGPT on random images of MNIST's shape (28 x 28, 256 levels, 10 classes;
run with --synthetic): 784 tokens a sequence, 8 layers of width 512, bfloat16."""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from synthetic import experiment_on_random_images


def get_config():
    cfg = experiment_on_random_images('igpt_binarized_mnist')
    cfg.data.synthetic_levels, cfg.data.synthetic_classes = 256, 10
    cfg.model.update(num_layers=8, num_heads=8, embed_dim=512, mlp_dim=2048, dtype='bfloat16',
                     class_conditional=True)
    cfg.train.batch_size = 32
    return cfg
