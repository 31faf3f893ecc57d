"""iGPT on binarized MNIST (784 binary tokens in raster order): test NLL in nats/image.

Literature for the same data: PixelCNN 81.30 nats/image, Gated PixelRNN 79.20. Context 784 makes
attention the dominant cost; on a CPU this config is for checking, an accelerator runs it properly.
"""

from dul_jax import model_configs
from dul_jax.config import base_config


def get_config():
    c = base_config()
    c.data.name = 'binarized_mnist'
    c.model = model_configs.autoregressive()
    c.model.num_layers = 4
    c.model.scan_unroll = 0       # unrolled: the faster step for a few layers on the CPU
    c.model.num_heads = 4
    c.model.embed_dim = 128
    c.model.mlp_dim = 512
    c.optim.lr = 1e-3
    c.optim.ema_decay = 0.999
    c.train.steps = 20000
    c.train.batch_size = 32
    c.train.log_every = 100
    c.train.eval_every = 2000
    c.train.ckpt_every = 2000
    c.eval.max_examples = 2000
    c.sample.num = 16
    return c
