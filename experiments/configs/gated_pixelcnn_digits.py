"""Class-conditional Gated PixelCNN on 8x8 digits (17 gray levels): a categorical softmax per
pixel, reported in bits/dim (compare the iGPT `demo.py`: 1.75 bits/dim test after 600 steps).

A few minutes on a 2-core CPU; samples are a PNG grid with one column per class.
"""

from dul_jax import model_configs
from dul_jax.config import base_config


def get_config():
    c = base_config()
    c.task = 'pixelcnn'
    c.data.name = 'digits'
    c.model = model_configs.pixelcnn()
    c.model.kind = 'gated'
    c.model.output = 'categorical'
    c.model.hidden = 64
    c.model.num_layers = 5
    c.model.first_kernel_size = 5
    c.model.class_conditional = True
    c.optim.lr = 2e-3
    c.optim.warmup_steps = 100
    c.optim.ema_decay = 0.99
    c.train.steps = 1500
    c.train.batch_size = 64
    c.train.log_every = 50
    c.train.eval_every = 500
    c.train.ckpt_every = 500
    c.eval.max_examples = 0
    c.sample.num = 40                  # four per class
    # ZeRO-3 for convolutions: shard kernels' input channels over fsdp (a no-op while fsdp=1)
    c.mesh.rules = (('conv_in', 'fsdp'),)
    return c
