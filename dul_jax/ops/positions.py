"""x (B, T, d) + a position table (T, d).

impls: `reference` is `x + table[None]` under autodiff, whose table gradient is a reduction
over the batch; `ones_matmul` writes it as `ones(B) @ g` behind an optimization barrier. On GPUs
XLA gave that reduction's operand a batch-minor layout, which spread over the residual stream as
transposes; a matrix product has no such preference (and, unlike a scatter-add, is deterministic).
"""

import jax
import jax.numpy as jnp

from dul_jax.ops import choice

IMPLS = ('auto', 'reference', 'ones_matmul')


# The CPU has no such layout problem, and the reduction ran faster there than the product.
AUTO = {'cpu': 'reference', None: 'ones_matmul'}


def resolve(impl: str, backend: str | None = None) -> str:
    return choice.resolve('positions', IMPLS, AUTO, impl, backend)


def add_positions(x: jax.Array, table: jax.Array, impl: str = 'auto') -> jax.Array:
    table = table.astype(x.dtype)   # one dtype inside: gradients keep each's own
    return ones_matmul(x, table) if resolve(impl) == 'ones_matmul' else reference(x, table)


def reference(x, table):
    return x + table[None]


@jax.custom_vjp
def ones_matmul(x: jax.Array, table: jax.Array) -> jax.Array:
    return x + table[None]


def _ones_matmul_fwd(x, table):
    return x + table[None], x.shape[0]


def _ones_matmul_bwd(batch, g):
    ones = jax.lax.optimization_barrier(jnp.ones((batch,), g.dtype))
    return g, jnp.einsum('b,btd->td', ones, g)


ones_matmul.defvjp(_ones_matmul_fwd, _ones_matmul_bwd)
