"""Helpers for benchmark configs: an experiment's config on random data of its data set's shape, so
that a machine without the data set (a lent accelerator) times the same model and step."""

import os

from dul_jax import config as config_lib

EXPERIMENTS = os.path.join(os.path.dirname(__file__), '..', '..', 'experiments', 'configs')

# The DataSpecs of the local image data sets (dul_jax.data.describe): shape, levels, classes.
IMAGE_SHAPES = {
    'digits': ((8, 8, 1), 17, 10),
    'mnist_test': ((28, 28, 1), 256, 10),
    'binarized_mnist': ((28, 28, 1), 2, 0),
}


def experiment_on_random_images(name: str):
    """experiments/configs/NAME.py with its data set swapped for random images of the same spec."""
    cfg = config_lib.load_config(os.path.join(EXPERIMENTS, name + '.py'))
    shape, levels, classes = IMAGE_SHAPES[cfg.data.name]
    cfg.data.name = 'synthetic'
    cfg.data.synthetic_shape = shape
    cfg.data.synthetic_levels = levels
    cfg.data.synthetic_classes = classes
    return cfg
