"""experiments/configs/gated_pixelcnn_mnist_logistic.py on random images of MNIST's shape (run
with --synthetic)."""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from synthetic import experiment_on_random_images


def get_config():
    return experiment_on_random_images('gated_pixelcnn_mnist_logistic')
