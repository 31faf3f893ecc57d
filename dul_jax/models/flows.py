"""Multi-scale normalizing flows over images, RealNVP (Dinh et al. 2017) and Glow (Kingma &
Dhariwal 2018), and the conditional flow of variational dequantization (Ho et al. 2019, Flow++).

The flow maps dequantized pixels x in (0, 1)^(H, W, C) through a logit to a flat z (B, D): the
factored-out halves of each scale, then what is left at the last scale, concatenated in that
order, with log |det dz/dx|. The densities (a standard normal on z) are the task's.

Plans (the layers of one scale; the last scale has no squeeze and no split):
- RealNVP: `steps` checkerboard couplings, squeeze, `steps` channel couplings, split half off;
  the last scale is `steps + 1` checkerboard couplings.
- Glow: squeeze, then `steps` x (actnorm, invertible 1x1 conv, channel coupling), split half off;
  the last scale squeezes too. Factored-out halves get the standard normal prior (Glow's
  learned conditional prior is not built).
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dul_jax.models import bijectors as bj
from dul_jax.models.layers import conv

KINDS = ('realnvp', 'glow')


class Squeeze(nn.Module):
    def __call__(self, x, reverse: bool = False):
        return (bj.unsqueeze(x) if reverse else bj.squeeze(x)), jnp.zeros(x.shape[:1])


class Split(nn.Module):
    """Marks where half the channels leave the flow as latents (handled by MultiScaleFlow)."""


def plan(kind: str, scales: int, steps: int, hidden: int, blocks: int, scale_fn: str, dtype):
    """The flow's layers in order, as (kind, module) pairs."""
    def coupling(mask, parity):
        return bj.AffineCoupling(mask, parity, hidden, blocks, scale_fn, dtype)
    layers = []
    for s in range(scales):
        last = s == scales - 1
        if kind == 'realnvp':
            layers += [coupling('checkerboard', i % 2) for i in range(steps + last)]
            if not last:
                layers += [Squeeze()] + [coupling('channel', i % 2) for i in range(steps)]
        else:
            layers.append(Squeeze())
            for i in range(steps):
                layers += [bj.ActNorm(), bj.InvertibleConv1x1(seed=100 * s + i),
                           coupling('channel', i % 2)]
        if not last:
            layers.append(Split())
    return layers


class MultiScaleFlow(nn.Module):
    """x in (0, 1)^(H, W, C) <-> z (B, D), with log |det dz/dx| per example."""
    image_shape: tuple[int, int, int]
    kind: str = 'realnvp'
    scales: int = 3
    steps: int = 3
    hidden: int = 64
    blocks: int = 2
    scale_fn: str = 'tanh'
    logit_alpha: float = 0.05
    dtype: Any = jnp.float32

    def setup(self):
        self.logit = bj.Logit(self.logit_alpha)
        self.layers = plan(self.kind, self.scales, self.steps, self.hidden, self.blocks,
                           self.scale_fn, self.dtype)

    def _shapes(self):
        """The (h, w, c) of each split-off half, in order, then of the last scale's output."""
        h, w, c = self.image_shape
        out = []
        for layer in self.layers:
            if isinstance(layer, Squeeze):
                h, w, c = h // 2, w // 2, 4 * c
            elif isinstance(layer, Split):
                c //= 2
                out.append((h, w, c))
        return out + [(h, w, c)]

    def __call__(self, x, reverse: bool = False):
        return self.inverse(x) if reverse else self.forward(x)

    def forward(self, x):
        h, ldj = self.logit(x)
        parts = []
        for layer in self.layers:
            if isinstance(layer, Split):
                half, h = jnp.split(h, 2, -1)
                parts.append(half.reshape(half.shape[0], -1))
                continue
            h, step_ldj = layer(h)
            ldj = ldj + step_ldj
        return jnp.concatenate(parts + [h.reshape(h.shape[0], -1)], -1), ldj

    def inverse(self, z):
        """Flat z (B, D) -> (x, log |det dx/dz|)."""
        shapes = self._shapes()
        sizes = np.cumsum([int(np.prod(s)) for s in shapes])[:-1]
        parts = [p.reshape((z.shape[0],) + s) for p, s in zip(jnp.split(z, sizes, -1), shapes)]
        h, ldj = parts.pop(), jnp.zeros(z.shape[:1])
        for layer in reversed(self.layers):
            if isinstance(layer, Split):
                h = jnp.concatenate([parts.pop(), h], -1)
                continue
            h, step_ldj = layer(h, reverse=True)
            ldj = ldj + step_ldj
        x, logit_ldj = self.logit(h, reverse=True)
        return x, ldj + logit_ldj


class Dequantizer(nn.Module):
    """The noise of variational dequantization, u = sigmoid(g(eps; x)) in (0, 1)^(H, W, C), g a
    stack of checkerboard couplings conditioned on features of the image x. Returns u and
    log |det du/deps| per example, so log q(u | x) = log N(eps) - that."""
    steps: int = 4
    hidden: int = 32
    blocks: int = 1
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x_unit, eps):
        """x_unit: the image in [-1, 1], (B, H, W, C); eps: standard normal noise, same shape."""
        features = nn.relu(conv(self.hidden, 'features_0', dtype=self.dtype)(x_unit))
        features = conv(self.hidden, 'features_1', dtype=self.dtype)(features)
        v, ldj = eps, jnp.zeros(eps.shape[:1])
        for i in range(self.steps):
            v, step_ldj = bj.AffineCoupling('checkerboard', i % 2, self.hidden, self.blocks,
                                            'tanh', self.dtype, name=f'coupling_{i}')(
                v, cond=features.astype(jnp.float32))
            ldj = ldj + step_ldj
        ldj = ldj + (jax.nn.log_sigmoid(v) + jax.nn.log_sigmoid(-v)).reshape(v.shape[0], -1).sum(-1)
        return jax.nn.sigmoid(v), ldj
