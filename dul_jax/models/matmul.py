"""`x @ w` for dense layers, with a backward pass that XLA:CPU runs on its fast matmul path.

XLA:CPU hands a dot to YNNPACK only when the left operand contracts over its minor dimension; the
weight gradient x^T g, as autodiff writes it, contracts over the rows of x, so it goes to Eigen's
generic kernel instead. On the 2-core CPU of benchmarks/README.md that ran the MLP's weight
gradients 10-30% slower (4096 x 1024 x 256: 17.2 ms against 11.7), and the GPT step 5-6%
slower. Here the backward pass materialises the transposed operand first, behind an
optimization barrier so that XLA cannot fold the transpose back into the dot, choosing the
smaller of x and g to transpose. On GPUs and TPUs the product is plain: their matmul units take
transposed operands at no cost, and the extra copy would only add memory traffic. Like any
custom_vjp, the CPU form supports reverse-mode differentiation only (no jax.jvp / jacfwd).
"""

import math

import jax
import jax.numpy as jnp


def _materialized(a: jax.Array) -> jax.Array:
    return jax.lax.optimization_barrier(a)


@jax.custom_vjp
def _matmul_2d(x: jax.Array, w: jax.Array) -> jax.Array:
    return x @ w


def _matmul_2d_fwd(x, w):
    return x @ w, (x, w)


def _matmul_2d_bwd(res, g):
    x, w = res
    dx = g @ w.T  # (M, N) x (N, K): contracts over g's minor dimension, YNNPACK's layout already
    if x.shape[1] <= g.shape[1]:
        dw = _materialized(x.T) @ g               # (K, M) x (M, N)
    else:
        # (N, M) x (M, K), then a weight-sized transpose; the second barrier keeps XLA from
        # folding that transpose into the dot by swapping its operands back
        dw = _materialized(_materialized(g.T) @ x).T
    return dx.astype(x.dtype), dw.astype(w.dtype)


_matmul_2d.defvjp(_matmul_2d_fwd, _matmul_2d_bwd)


def matmul(x: jax.Array, w: jax.Array, axes: int = 1, precision=None) -> jax.Array:
    """Contracts the last `axes` axes of x with the first `axes` axes of w, as
    `jnp.tensordot(x, w, axes)`, in the dtype of the operands: x (..., K) @ w (K, N) for axes=1.
    `precision` applies off the CPU (XLA:CPU multiplies float32 exactly whatever it says). The
    backend is the default one at trace time, as for `use_cudnn_attention`."""
    if jax.default_backend() != 'cpu':
        return jnp.tensordot(x, w, axes, precision=precision)
    batch, out = x.shape[:x.ndim - axes], w.shape[axes:]
    x2, w2 = x.reshape(math.prod(batch), -1), w.reshape(-1, math.prod(out))
    return _matmul_2d(x2, w2).reshape(*batch, *out)


def dense_dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None):
    """`nn.Dense(dot_general=dense_dot_general)`: nn.Dense's contraction through `matmul`."""
    if dimension_numbers != (((lhs.ndim - 1,), (0,)), ((), ())) or rhs.ndim != 2:
        raise ValueError(f'dense_dot_general contracts the last axis of x with the first of a 2-D '
                         f'kernel, got {dimension_numbers} for kernel shape {rhs.shape}')
    if preferred_element_type is not None:  # nn.Dense never asks; keep XLA's own semantics
        return jax.lax.dot_general(lhs, rhs, dimension_numbers, precision,
                                   preferred_element_type=preferred_element_type)
    return matmul(lhs, rhs, precision=precision)
