"""GELU, tanh approximation (`nn.gelu`).

impls: `reference` is `nn.gelu` under autodiff, which keeps tanh(...) as a second residual of the
input's size; `recomputed` keeps only the input and recomputes the slope in the backward pass.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from dul_jax.ops import choice

IMPLS = ('auto', 'reference', 'recomputed')

# nn.gelu's tanh approximation: 0.5 x (1 + tanh(u)), u = c (x + 0.044715 x^3)
_C = math.sqrt(2.0 / math.pi)


AUTO = {None: 'recomputed'}


def resolve(impl: str, backend: str | None = None) -> str:
    return choice.resolve('gelu', IMPLS, AUTO, impl, backend)


def gelu(x: jax.Array, impl: str = 'auto') -> jax.Array:
    return recomputed(x) if resolve(impl) == 'recomputed' else reference(x)


def reference(x):
    return nn.gelu(x)


@jax.custom_vjp
def recomputed(x: jax.Array) -> jax.Array:
    """`nn.gelu` whose backward pass keeps only x. The slope goes through
    sigmoid(2u) = (1 + tanh u) / 2 so that XLA cannot CSE it with the forward's tanh."""
    return nn.gelu(x)


def _recomputed_fwd(x):
    return nn.gelu(x), x


def _recomputed_bwd(x, g):
    xf = x.astype(jnp.float32)
    s = jax.nn.sigmoid(2.0 * _C * (xf + 0.044715 * xf ** 3))  # = 0.5 (1 + tanh u)
    # d/dx [x s(x)] = s + x * 2 s (1 - s) * c (1 + 3 * 0.044715 x^2)
    slope = s * (1.0 + 2.0 * _C * xf * (1.0 - s) * (1.0 + 3 * 0.044715 * xf * xf))
    return ((g.astype(jnp.float32) * slope).astype(x.dtype),)


recomputed.defvjp(_recomputed_fwd, _recomputed_bwd)
