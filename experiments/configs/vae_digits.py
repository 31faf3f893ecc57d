"""VAE on scikit-learn's 8x8 digits (17 levels) with a discretized logistic mixture decoder: a
small fully connected model that trains in a few minutes on the CPU."""

from dul_jax import model_configs
from dul_jax.config import base_config


def get_config():
    c = base_config()
    c.task = 'vae'
    c.data.name = 'digits'
    c.model = model_configs.vae()
    c.model.channels = ()
    c.model.hidden = (256, 256)
    c.model.latent_dim = 16
    c.model.likelihood = 'logistic_mixture'
    c.model.mixtures = 3
    c.optim.lr = 1e-3
    c.optim.warmup_steps = 100
    c.train.steps = 3000
    c.train.batch_size = 64
    c.train.log_every = 100
    c.train.eval_every = 1000
    c.train.ckpt_every = 1000
    c.train.sample_every = 1000
    c.eval.batch_size = 256
    c.eval.max_examples = 0
    c.eval.evaluators = ('iwae', 'posterior', 'bound', 'probe')
    c.eval.iwae.k = 1000
    c.eval.iwae.chunk = 250
    c.eval.iwae.batch_size = 32
    c.eval.bound.examples = 0
    c.sample.num = 40
    return c
