"""`x @ w` for dense layers.

impls: `reference` is `jnp.tensordot` (plain `lax.dot_general` for nn.Dense);
`transposed_backward` materialises the transposed operand of the weight gradient, so that
XLA:CPU runs it on YNNPACK, which takes only dots whose left operand contracts over its minor
dimension (autodiff's x^T g went to Eigen's slower generic kernel). GPUs and TPUs take
transposed operands at no cost: there the extra copy would only add memory traffic.
"""

import functools
import math

import jax
import jax.numpy as jnp

from dul_jax.ops import choice

IMPLS = ('auto', 'reference', 'transposed_backward')


AUTO = {'cpu': 'transposed_backward', None: 'reference'}


def resolve(impl: str, backend: str | None = None) -> str:
    return choice.resolve('matmul', IMPLS, AUTO, impl, backend)


def matmul(x: jax.Array, w: jax.Array, axes: int = 1, impl: str = 'auto',
           precision=None) -> jax.Array:
    """Contracts the last `axes` axes of x with the first `axes` axes of w, as
    `jnp.tensordot(x, w, axes)`, in the dtype of the operands. `precision` is ignored by
    transposed_backward (XLA:CPU multiplies float32 exactly whatever it says)."""
    if resolve(impl) == 'reference':
        return jnp.tensordot(x, w, axes, precision=precision)
    batch, out = x.shape[:x.ndim - axes], w.shape[axes:]
    x2, w2 = x.reshape(math.prod(batch), -1), w.reshape(-1, math.prod(out))
    return transposed_backward(x2, w2).reshape(*batch, *out)


@functools.cache
def dense_dot_general(impl: str = 'auto'):
    """The `dot_general` to give nn.Dense: its contraction through `matmul(impl=impl)`."""
    resolve(impl)  # unknown names fail here, not at trace time

    def dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None):
        if dimension_numbers != (((lhs.ndim - 1,), (0,)), ((), ())) or rhs.ndim != 2:
            raise ValueError(f'dense_dot_general contracts the last axis of x with the first of '
                             f'a 2-D kernel, got {dimension_numbers} for kernel shape {rhs.shape}')
        if preferred_element_type is not None:  # nn.Dense never asks; keep XLA's own semantics
            return jax.lax.dot_general(lhs, rhs, dimension_numbers, precision,
                                       preferred_element_type=preferred_element_type)
        return matmul(lhs, rhs, impl=impl, precision=precision)
    return dot_general


def _materialized(a: jax.Array) -> jax.Array:
    return jax.lax.optimization_barrier(a)


@jax.custom_vjp
def transposed_backward(x: jax.Array, w: jax.Array) -> jax.Array:
    """(M, K) @ (K, N) whose weight gradient transposes the smaller of x and g first, behind an
    optimization barrier so that XLA cannot fold the transpose back into the dot."""
    return x @ w


def _transposed_fwd(x, w):
    return x @ w, (x, w)


def _transposed_bwd(res, g):
    x, w = res
    dx = g @ w.T  # (M, N) x (N, K): contracts over g's minor dimension, YNNPACK's layout already
    if x.shape[1] <= g.shape[1]:
        dw = _materialized(x.T) @ g               # (K, M) x (M, N)
    else:
        # (N, M) x (M, K), then a weight-sized transpose; the second barrier keeps XLA from
        # folding that transpose into the dot by swapping its operands back
        dw = _materialized(_materialized(g.T) @ x).T
    return dx.astype(x.dtype), dw.astype(w.dtype)


transposed_backward.defvjp(_transposed_fwd, _transposed_bwd)
