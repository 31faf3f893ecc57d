"""PixelCNN task: exact likelihoods of discrete images with masked convolutional models.

p(x) = prod_t p(x_t | x_<t [, class]) over positions t in raster order (row, column, channel).
`model.kind` picks the network ('pixelcnn' or 'gated'), `model.output` the per-position
distribution: 'categorical' (a softmax over the data set's levels) or 'logistic_mixture'
(PixelCNN++'s discretized mixture of logistics). The loss is the mean NLL per dimension in nats.
Sampling and entropy coding run one position at a time from cached activations
(models/pixelcnn_decode.py), in raster order; sampling inside one jitted loop.
Multi-channel images are autoregressive over channels through the masks (see models/pixelcnn.py),
so with the mixture output each channel has its own mixture conditioned on the earlier channels,
in place of PixelCNN++'s linear coefficients between the channels of one shared mixture.
"""

import jax
import jax.numpy as jnp
import numpy as np

from dul_jax.config import check
from dul_jax.errors import UserError
from dul_jax.losses.likelihood import bits_per_dim
from dul_jax.losses.logistic_mixture import (
    discretized_logistic_mixture_log_probs,
    discretized_logistic_mixture_nll,
)
from dul_jax.model_configs import pixelcnn as default_model_config  # noqa: F401 (the contract)
from dul_jax.models import pixelcnn_decode
from dul_jax.models.pixelcnn import GatedPixelCNN, PixelCNN
from dul_jax.ops.cross_entropy import categorical_nll
from dul_jax.sampling import sample_logits
from dul_jax.tasks.base import LossOut, Task, jit_method
from dul_jax.tasks.capabilities import Generates

MODELS = {'pixelcnn': PixelCNN, 'gated': GatedPixelCNN}
OUTPUTS = ('categorical', 'logistic_mixture')


class PixelCNNTask(Task, Generates):

    def __init__(self, cfg, spec):
        self.levels = spec.num_levels
        self.mixture = cfg.model.output == 'logistic_mixture'
        self.dims = int(np.prod(spec.shape))
        super().__init__(cfg, spec)

    def build_model(self):
        m = self.cfg.model
        return MODELS[m.kind](
            out_per_channel=3 * m.num_mixtures if self.mixture else self.levels,
            data_channels=self.spec.shape[-1], hidden=m.hidden, num_layers=m.num_layers,
            kernel_size=m.kernel_size, first_kernel_size=m.first_kernel_size,
            num_classes=self.spec.num_classes if self.conditional else 0, dtype=self.dtype)

    def validate(self):
        super().validate()
        self.require_images()
        m, spec = self.cfg.model, self.spec
        check(m.kind in MODELS, f'model.kind must be "pixelcnn" or "gated", got "{m.kind}".')
        check(m.output in OUTPUTS,
              f'model.output must be "categorical" or "logistic_mixture", got "{m.output}".')
        check(m.num_layers >= 1, f'model.num_layers must be at least 1, got {m.num_layers}.')
        for key in ('kernel_size', 'first_kernel_size'):
            check(m[key] >= 3 and m[key] % 2 == 1,
                  f'model.{key} must be odd and at least 3, got {m[key]}.')
        check(m.hidden % spec.shape[-1] == 0,
              f'model.hidden={m.hidden} must be a multiple of the {spec.shape[-1]} image channels '
              '(each hidden channel belongs to one of them).')
        check(not self.mixture or m.num_mixtures >= 1,
              f'model.num_mixtures must be at least 1, got {m.num_mixtures}.')
        check(not self.mixture or self.levels >= 2,
              f'a logistic mixture needs at least 2 levels, but "{spec.name}" has {self.levels}; '
              'set --config.model.output=categorical.')

    def example_size(self):
        return self.dims

    # ---- the model's distribution -------------------------------------------------------

    def _scaled(self, levels):
        """Levels [0, L) -> [-1, 1], the network's input."""
        return levels.astype(jnp.float32) * (2.0 / max(self.levels - 1, 1)) - 1.0

    def outputs(self, params, levels, labels=None):
        """Distribution parameters (B, H, W, C, P) for integer images (B, H, W, C)."""
        return self.model.apply({'params': params}, self._scaled(levels), labels)

    def level_logits(self, outputs):
        """(..., P) distribution parameters -> (..., L) log-probabilities (up to a constant)."""
        if self.mixture:
            return discretized_logistic_mixture_log_probs(outputs, self.levels)
        return outputs

    # ---- one position at a time (models/pixelcnn_decode.py): sampling and entropy coding ----

    def decode_init(self, num):
        """The empty activation cache for `num` images."""
        return pixelcnn_decode.init_state(self.model, tuple(self.spec.shape), num)

    def decode_logits(self, params, state, position, labels=None):
        """((B, L) logits of flat raster `position`, updated cache), given the levels written at
        every earlier position: the full model's, computed from cached activations."""
        outputs, state = pixelcnn_decode.step(self.model, params, state, tuple(self.spec.shape),
                                              position, labels)
        return self.level_logits(outputs).astype(jnp.float32), state

    def decode_write(self, state, position, symbols):
        """The cache with levels `symbols` (B,) written at flat raster `position`."""
        return pixelcnn_decode.write(self.model, state, tuple(self.spec.shape), position,
                                     self._scaled(symbols))

    def _nll(self, params, batch):
        """NLL in nats per dimension, (B, H, W, C)."""
        levels = batch['image'].astype(jnp.int32)
        outputs = self.outputs(params, levels, self.labels(batch))
        if self.mixture:
            return discretized_logistic_mixture_nll(outputs, levels, self.levels)
        return categorical_nll(outputs, levels, impl=self.kernels.cross_entropy)

    def init(self, rng, batch):
        levels = jnp.asarray(batch['image'], jnp.int32)
        return self.model.init(rng, self._scaled(levels), self.labels(batch))['params']

    def loss(self, params, batch, rng, ctx):
        loss = self._nll(params, batch).mean()
        return LossOut(loss, {'loss': loss, 'bits_per_dim': bits_per_dim(loss, 1)})

    def eval_metrics(self, params, batch, rng):
        nll = self._nll(params, batch).reshape(batch['image'].shape[0], -1).sum(axis=-1)
        return {'loss': nll / self.dims, 'bits_per_dim': bits_per_dim(nll, self.dims),
                'nats_per_image': nll}

    # ---- sampling -----------------------------------------------------------------------

    @jit_method('num')
    def _sample(self, params, rng, num, labels):
        temperature, top_k = self.cfg.sample.temperature, self.cfg.sample.top_k

        def draw(position, carry):
            flat, state = carry
            logits, state = self.decode_logits(params, state, position, labels)
            symbols = sample_logits(jax.random.fold_in(rng, position), logits, temperature, top_k)
            symbols = symbols.astype(jnp.int32)
            return flat.at[:, position].set(symbols), self.decode_write(state, position, symbols)

        flat = jnp.zeros((num, self.dims), jnp.int32)
        flat, _ = jax.lax.fori_loop(0, self.dims, draw, (flat, self.decode_init(num)))
        return flat.reshape((num,) + tuple(self.spec.shape))

    def sample(self, params, rng, num):
        return {'samples': self._sample(params, rng, num, self.sample_labels(num))}

    def save_samples(self, outputs, path_stem):
        return [self.save_image_grid(outputs['samples'], path_stem + '.png')]

    def position_decoder(self, params):
        if self.conditional:
            raise UserError('a class-conditional model would need the labels to code with; use '
                            'an unconditional run.')
        return PixelDecoder(self, params)


class PixelDecoder:
    """The PixelCNN one position at a time from its cached activations: the PositionDecoder that
    `dul-jax compress` codes with."""
    rows = 1000  # images side by side; changing it changes the logits' last bits

    def __init__(self, task: PixelCNNTask, params):
        self.task, self.length, self.params = task, task.dims, jax.device_put(params)
        self._logits = jax.jit(task.decode_logits, donate_argnums=1)
        self._write = jax.jit(task.decode_write, donate_argnums=0)

    def start(self, rows):
        return self.task.decode_init(rows), 0

    def next(self, state):
        cache, t = state
        logits, cache = self._logits(self.params, cache, t)
        return (cache, t), logits

    def feed(self, state, symbols):
        cache, t = state
        return self._write(cache, t, jnp.asarray(symbols, jnp.int32)), t + 1


TASK = PixelCNNTask
