"""Normalizing flows over discrete images: RealNVP and Glow (models/flows.py) with uniform or
variational dequantization (Ho et al. 2019), trained by exact maximum likelihood of the
dequantized pixels.

Bits/dim follow the literature (Dinh et al. 2017; Kingma & Dhariwal 2018): levels l become
x = (l + u) / L with noise u in [0, 1)^D, and
    -log P(l) <= E_q(u|l) [ -log p(x) + log q(u|l) ] + D log L,
the D log L being the Jacobian of the 1/L bins. Uniform noise has log q = 0; the variational
dequantizer learns q(u|l) and tightens the bound. The loss is that bound in nats per dimension;
eval reports it in bits/dim and nats per image at one noise draw per image, and the `iwae`
evaluator averages k draws inside the log (the importance-weighted dequantization bound).

Samples at temperature T draw z ~ N(0, T^2 I) (Glow), drawn for grids at T = 0.5, 0.7 and 1.0;
pictures hold test images over their reconstructions x -> z -> x (exact up to float error).
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dul_jax.config import check
from dul_jax.losses import latent
from dul_jax.losses.gaussian import levels_to_unit
from dul_jax.losses.likelihood import bits_per_dim
from dul_jax.model_configs import flow as default_model_config  # noqa: F401 (the contract)
from dul_jax.models import bijectors
from dul_jax.models.flows import KINDS, Dequantizer, MultiScaleFlow
from dul_jax.tasks.base import LossOut, Task, jit_method
from dul_jax.tasks.capabilities import (
    Bounds,
    DataInit,
    Generates,
    ImportanceWeights,
    Pictures,
    SampleImages,
)

DEQUANTIZATIONS = ('uniform', 'variational')


def _standard_normal_log_prob(x):
    """log N(x; 0, I) of each example's values, in nats: (B, ...) -> (B,)."""
    return latent.standard_normal_log_prob(x).reshape(x.shape[0], -1).sum(-1)
PICTURE_TEMPERATURES = (0.5, 0.7, 1.0)


class FlowTask(Task, Bounds, DataInit, Generates, ImportanceWeights, Pictures, SampleImages):

    def validate(self):
        super().validate()
        self.require_images()
        m = self.cfg.model
        check(m.kind in KINDS, f'model.kind must be "realnvp" or "glow", got "{m.kind}".')
        check(m.dequantization in DEQUANTIZATIONS, 'model.dequantization must be "uniform" '
              f'or "variational", got "{m.dequantization}".')
        check(m.scale_fn in bijectors.SCALE_FNS,
              f'model.scale_fn must be "tanh" or "sigmoid", got "{m.scale_fn}".')
        check(m.scales >= 1 and m.steps >= 1 and m.hidden >= 1 and m.blocks >= 0,
              'model.scales, model.steps and model.hidden must be positive, model.blocks >= 0.')
        check(0 < m.logit_alpha < 0.5, f'model.logit_alpha must be in (0, 0.5), got '
              f'{m.logit_alpha}.')
        h, w, c = self.spec.shape
        squeezes = m.scales if m.kind == 'glow' else m.scales - 1
        check(h % 2 ** squeezes == 0 and w % 2 ** squeezes == 0,
              f'model.scales={m.scales} squeezes {m.kind} images {squeezes} times, but the '
              f'{h}x{w} images of "{self.spec.name}" do not halve that often; use fewer scales.')
        check(m.kind == 'glow' or m.scales == 1 or h * w * c > 1,
              'a flow needs more than one pixel value.')

    def build_model(self):
        m = self.cfg.model
        return MultiScaleFlow(tuple(self.spec.shape), m.kind, m.scales, m.steps, m.hidden,
                              m.blocks, m.scale_fn, m.logit_alpha, self.dtype)

    @property
    def dequantizer(self):
        m = self.cfg.model
        return Dequantizer(m.dequantizer_steps, m.dequantizer_hidden, dtype=self.dtype) \
            if m.dequantization == 'variational' else None

    def example_size(self):
        return int(np.prod(self.spec.shape))

    def init(self, rng, batch):
        flow_rng, deq_rng = jax.random.split(rng)
        levels = batch['image']
        # bin centres: ActNorm's data-dependent init sees the batch without noise
        params = {'flow': self.model.init(flow_rng, self._dequantized(levels, 0.5))['params']}
        if self.dequantizer is not None:
            params['dequantizer'] = self.dequantizer.init(
                deq_rng, levels_to_unit(levels, self.spec.num_levels),
                jnp.zeros(levels.shape))['params']
        return params

    def data_init(self, params, batch, rng):
        """ActNorm's data-dependent init: params with every actnorm leaf replaced by its value
        when the model is initialised on this (real) batch; the trainer calls it once, on a
        fresh start."""
        fresh = nn.meta.unbox(self.init(rng, batch))
        return jax.tree_util.tree_map_with_path(
            lambda path, old, new: new if 'actnorm' in jax.tree_util.keystr(path) else old,
            params, fresh)

    # ---- the model's pieces --------------------------------------------------------------------

    def _uniform(self, rng, shape):
        return jax.random.uniform(rng, shape), jnp.zeros(shape[:1])

    def _dequantized(self, levels, u):
        return (levels.astype(jnp.float32) + u) / self.spec.num_levels

    def _noise(self, params, levels, rng):
        """Dequantization noise u in [0, 1)^D and log q(u | levels), per example."""
        if self.dequantizer is None:
            return self._uniform(rng, levels.shape)
        eps = jax.random.normal(rng, levels.shape)
        u, ldj = self.dequantizer.apply({'params': params['dequantizer']},
                                        levels_to_unit(levels, self.spec.num_levels), eps)
        return u, _standard_normal_log_prob(eps) - ldj

    def log_prob(self, params, x):
        """log p(x) per example, in nats, of dequantized images x in (0, 1)^(H, W, C)."""
        z, ldj = self.model.apply({'params': params['flow']}, x)
        return _standard_normal_log_prob(z) + ldj

    def bound_terms(self, params, batch, rng):
        """The bound's terms in nats per image at one noise draw: -log p(x) + D log L of the
        dequantized image, and log q(u | l) (zero for uniform noise)."""
        levels = batch['image']
        u, log_q = self._noise(params, levels, rng)
        nll = -self.log_prob(params, self._dequantized(levels, u))
        return {'flow_nll': nll + self.example_size() * math.log(self.spec.num_levels),
                'dequantization': log_q}

    def log_importance_weights(self, params, batch, rng, num: int):
        """log P(l, u_i) - log q(u_i | l) for `num` noise draws per image: (B, num)."""
        def one(key):
            terms = self.bound_terms(params, batch, key)
            return -(terms['flow_nll'] + terms['dequantization'])
        return jax.vmap(one, out_axes=-1)(jax.random.split(rng, num))

    # ---- training and eval -----------------------------------------------------------------------

    def loss(self, params, batch, rng, ctx):
        terms = self.bound_terms(params, batch, rng)
        nats = terms['flow_nll'] + terms['dequantization']
        loss = nats.mean() / self.example_size()
        return LossOut(loss, {'loss': loss, 'nats_per_image': nats.mean(),
                              'bits_per_dim': bits_per_dim(nats.mean(), self.example_size())})

    def eval_metrics(self, params, batch, rng):
        terms = self.bound_terms(params, batch, rng)
        nats = terms['flow_nll'] + terms['dequantization']
        dims = self.example_size()
        return {'loss': nats / dims, 'nats_per_image': nats,
                'bits_per_dim': bits_per_dim(nats, dims), **terms}

    # ---- samples and pictures --------------------------------------------------------------------

    def _to_levels(self, x):
        return jnp.clip(jnp.floor(x * self.spec.num_levels), 0,
                        self.spec.num_levels - 1).astype(jnp.uint8)

    def _generate(self, params, rng, num, temperature):
        z = temperature * jax.random.normal(rng, (num, self.example_size()))
        x, _ = self.model.apply({'params': params['flow']}, z, reverse=True)
        # an inverse can overflow at a rare z far out (a coupling dividing by a tiny scale)
        return jnp.nan_to_num(x, nan=0.0)

    @jit_method('num')
    def sample_images(self, params, rng, num):
        """(num, H, W, C) levels at temperature sample.temperature, in one pass of the flow."""
        return self._to_levels(self._generate(params, rng, num, self.cfg.sample.temperature))

    @jit_method('num')
    def sample(self, params, rng, num):
        """Levels at sample.temperature ('samples'), and for the pictures `num` samples in
        [0, 1] at each temperature T of PICTURE_TEMPERATURES ('T0.5', ...)."""
        out = {f'T{t}': jnp.clip(self._generate(params, jax.random.fold_in(rng, i), num, t),
                                 0.0, 1.0)
               for i, t in enumerate(PICTURE_TEMPERATURES)}
        return {'samples': self.sample_images(params, rng, num), **out}

    @jit_method()
    def _pictures(self, params, levels):
        x = self._dequantized(levels, 0.5)
        z, _ = self.model.apply({'params': params['flow']}, x)
        x_again = self.model.apply({'params': params['flow']}, z, reverse=True)[0]
        return {'originals': x, 'reconstructions': jnp.clip(x_again, 0.0, 1.0)}

    def pictures(self, params, rng, examples):
        """In [0, 1]: the examples (at their bin centres) over their reconstructions
        x -> z -> x."""
        return self._pictures(params, jnp.asarray(examples['image']))

    def save_samples(self, outputs, path_stem):
        paths = []
        for name in (f'T{t}' for t in PICTURE_TEMPERATURES if f'T{t}' in outputs):
            num, cols = len(outputs[name]), min(len(outputs[name]), 10)
            pad = np.zeros((-num % cols,) + outputs[name].shape[1:], np.float32)
            paths.append(self.save_image_grid(np.concatenate([outputs[name], pad]),
                                              f'{path_stem}_{name}.png', num_levels=2, cols=cols))
        if 'originals' in outputs:
            paths.append(self.save_reconstruction_grid(
                outputs['originals'], outputs['reconstructions'],
                path_stem + '_reconstructions.png', min(len(outputs['originals']), 10)))
        return paths


TASK = FlowTask
