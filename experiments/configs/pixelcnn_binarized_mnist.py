"""PixelCNN (van den Oord et al. 2016a: a 7x7 mask-'A' layer, then residual blocks of 3x3 mask-'B'
convolutions) on binarized MNIST: test NLL in nats/image (literature: 81.30 for a far larger one).

The blind-spot baseline for gated_pixelcnn_binarized_mnist.py, at a similar cost per step.
"""

from dul_jax import model_configs
from dul_jax.config import base_config


def get_config():
    c = base_config()
    c.task = 'pixelcnn'
    c.data.name = 'binarized_mnist'
    c.model = model_configs.pixelcnn()
    c.model.kind = 'pixelcnn'
    c.model.output = 'categorical'
    c.model.hidden = 48
    c.model.num_layers = 8
    c.model.kernel_size = 3
    c.model.first_kernel_size = 7
    c.optim.lr = 2e-3
    c.optim.warmup_steps = 200
    c.optim.ema_decay = 0.999
    c.train.steps = 4000
    c.train.batch_size = 32
    c.train.log_every = 100
    c.train.eval_every = 1500
    c.train.ckpt_every = 500
    c.eval.batch_size = 250
    c.eval.max_examples = 0
    c.sample.num = 16
    c.mesh.rules = (('conv_in', 'fsdp'),)   # ZeRO-3 for convolutions (a no-op while fsdp=1)
    return c
