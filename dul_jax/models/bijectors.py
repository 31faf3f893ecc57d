"""Invertible layers of normalizing flows (Dinh et al. 2017, RealNVP; Kingma & Dhariwal 2018, Glow).

Every layer maps (B, H, W, C) to the same number of values, and `__call__(x, reverse=False)`
returns (y, ldj): the output and the per-example log |det dy/dx| of the direction taken, so the
reverse call's ldj is minus the forward's at the same point. Layers with a data-dependent
initialisation (ActNorm) compute it the first time they are initialised on real data; the task's
`data_init` reruns the model's init on the first training batch (see tasks/flow.py).
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg

from dul_jax.models.layers import conv

SCALE_FNS = ('tanh', 'sigmoid')


def _sum_per_example(x):
    return x.reshape(x.shape[0], -1).sum(-1)


def _const(value, names=None):
    """An initialiser that returns `value` (a data-dependent or precomputed init)."""
    init = lambda rng, shape, dtype=jnp.float32: jnp.asarray(value, dtype).reshape(shape)
    return nn.with_logical_partitioning(init, names or (None,) * np.ndim(value))


def squeeze(x):
    """(B, H, W, C) -> (B, H/2, W/2, 4C): each 2x2 block of pixels becomes 4 channels."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h // 2, w // 2, 4 * c)


def unsqueeze(x):
    """The inverse of `squeeze`."""
    b, h, w, c = x.shape
    x = x.reshape(b, h, w, 2, 2, c // 4).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, 2 * h, 2 * w, c // 4)


class Logit(nn.Module):
    """x in (0, 1) -> logit(alpha + (1 - 2 alpha) x): pixels to an unbounded space (RealNVP)."""
    alpha: float = 0.05

    def __call__(self, x, reverse: bool = False):
        a = self.alpha
        if reverse:
            p = jax.nn.sigmoid(x)
            ldj = jax.nn.log_sigmoid(x) + jax.nn.log_sigmoid(-x) - np.log1p(-2 * a)
            return (p - a) / (1 - 2 * a), _sum_per_example(ldj)
        p = a + (1 - 2 * a) * x
        ldj = np.log1p(-2 * a) - jnp.log(p) - jnp.log1p(-p)
        return jnp.log(p) - jnp.log1p(-p), _sum_per_example(ldj)


class ActNorm(nn.Module):
    """Per-channel affine y = (x + bias) * exp(log_scale), initialised from the first batch it
    sees so its outputs have zero mean and unit variance per channel (Glow)."""
    eps: float = 1e-6

    @nn.compact
    def __call__(self, x, reverse: bool = False):
        axes = (0, 1, 2)
        bias = self.param('actnorm_bias', _const(-x.mean(axes)), (x.shape[-1],))
        log_scale = self.param('actnorm_log_scale', _const(-jnp.log(x.std(axes) + self.eps)),
                               (x.shape[-1],))
        ldj = jnp.broadcast_to(log_scale.sum() * x.shape[1] * x.shape[2], x.shape[:1])
        if reverse:
            return x * jnp.exp(-log_scale) - bias, -ldj
        return (x + bias) * jnp.exp(log_scale), ldj


class InvertibleConv1x1(nn.Module):
    """A learned channel mixing y = W x at each pixel, W = P L (U + diag(sign * exp(log_s))) with
    P fixed (Glow's LU form): log |det W| = sum(log_s), O(C) instead of O(C^3). Initialised
    to a random rotation drawn from `seed`."""
    seed: int = 0

    @nn.compact
    def __call__(self, x, reverse: bool = False):
        c = x.shape[-1]
        rotation = np.linalg.qr(np.random.default_rng(self.seed).normal(size=(c, c)))[0]
        p, lower0, upper0 = scipy.linalg.lu(rotation)
        diag = np.diag(upper0)
        lower = self.param('lower', _const(lower0), (c, c))
        upper = self.param('upper', _const(np.triu(upper0, 1)), (c, c))
        log_s = self.param('log_s', _const(np.log(np.abs(diag))), (c,))
        strict_lower = np.tril(np.ones((c, c)), -1)
        w = p @ (lower * strict_lower + np.eye(c)) @ (
            upper * strict_lower.T + jnp.diag(np.sign(diag) * jnp.exp(log_s)))
        ldj = jnp.broadcast_to(log_s.sum() * x.shape[1] * x.shape[2], x.shape[:1])
        if reverse:
            return x @ jnp.linalg.inv(w).T, -ldj
        return x @ w.T, ldj


def checkerboard(h: int, w: int, parity: int) -> np.ndarray:
    """(1, H, W, 1) mask, 1 where (i + j + parity) is even: the pixels a coupling conditions on."""
    return ((np.add.outer(np.arange(h), np.arange(w)) + parity) % 2 == 0)[None, :, :, None] \
        .astype(np.float32)


class CouplingNet(nn.Module):
    """The conv net of a coupling: 3x3 conv, residual blocks, and a zero-initialised 3x3 output
    conv, so every coupling starts as the identity."""
    out_channels: int
    hidden: int
    blocks: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        h = nn.relu(conv(self.hidden, 'in', dtype=self.dtype)(x.astype(self.dtype)))
        for i in range(self.blocks):
            r = nn.relu(conv(self.hidden, f'block_{i}_a', dtype=self.dtype)(h))
            h = nn.relu(h + conv(self.hidden, f'block_{i}_b', kernel=1, dtype=self.dtype)(r))
        return conv(self.out_channels, 'out', dtype=self.dtype, zero=True)(h).astype(jnp.float32)


class AffineCoupling(nn.Module):
    """y_b = x_b * scale(x_a) + shift(x_a), y_a = x_a, where a/b are the halves of a checkerboard
    (`mask='checkerboard'`) or of the channels (`mask='channel'`); `parity` swaps them. The
    log-scale is bounded: `scale_fn='tanh'` gives s = r * tanh(raw) with a learned r per channel
    (RealNVP), 'sigmoid' gives log sigmoid(raw + 2) (Glow). `cond`, (B, H, W, K) features,
    joins the net's input (a conditional flow)."""
    mask: str
    parity: int
    hidden: int
    blocks: int
    scale_fn: str = 'tanh'
    dtype: Any = jnp.float32

    def _log_scale_shift(self, x_a, cond, channels):
        inp = x_a if cond is None else jnp.concatenate([x_a, cond], -1)
        raw = CouplingNet(2 * channels, self.hidden, self.blocks, self.dtype, name='net')(inp)
        raw_scale, shift = jnp.split(raw, 2, -1)
        if self.scale_fn == 'tanh':
            r = self.param('rescale', _const(np.ones(channels)), (channels,))
            return r * jnp.tanh(raw_scale), shift
        return jax.nn.log_sigmoid(raw_scale + 2.0), shift

    @nn.compact
    def __call__(self, x, reverse: bool = False, cond=None):
        if self.mask == 'checkerboard':
            m = checkerboard(x.shape[1], x.shape[2], self.parity)
            log_s, t = self._log_scale_shift(x * m, cond, x.shape[-1])
            log_s, t = log_s * (1 - m), t * (1 - m)
            ldj = _sum_per_example(log_s)
            if reverse:
                return (x - t) * jnp.exp(-log_s), -ldj
            return x * jnp.exp(log_s) + t, ldj
        x_a, x_b = jnp.split(x, 2, -1)
        if self.parity:
            x_a, x_b = x_b, x_a
        log_s, t = self._log_scale_shift(x_a, cond, x_b.shape[-1])
        ldj = _sum_per_example(log_s)
        y_b = (x_b - t) * jnp.exp(-log_s) if reverse else x_b * jnp.exp(log_s) + t
        y = jnp.concatenate([y_b, x_a] if self.parity else [x_a, y_b], -1)
        return y, -ldj if reverse else ldj
