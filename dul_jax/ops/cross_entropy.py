"""-log softmax(logits)[target] in nats, per position, in float32.

impls: `reference` is `dul_jax.losses.likelihood.categorical_nll` (logsumexp - the target's
logit) under autodiff, whose gradient scatters into a zero float32 array of the logits' shape
(take_along_axis's transpose); `fused` writes the gradient softmax - one_hot by hand as one
elementwise pass in the logits' dtype.
"""

import jax
import jax.numpy as jnp

from dul_jax.losses import likelihood
from dul_jax.ops import choice

IMPLS = ('auto', 'reference', 'fused')


AUTO = {'cpu': 'reference', None: 'fused'}  # autodiff's gradient ran faster on the CPU


def resolve(impl: str, backend: str | None = None) -> str:
    return choice.resolve('cross_entropy', IMPLS, AUTO, impl, backend)


def categorical_nll(logits: jax.Array, targets: jax.Array, impl: str = 'auto') -> jax.Array:
    """logits (..., K), integer targets (...) in [0, K) -> (...) float32 nats."""
    return fused(logits, targets) if resolve(impl) == 'fused' else reference(logits, targets)


reference = likelihood.categorical_nll


@jax.custom_vjp
def fused(logits: jax.Array, targets: jax.Array) -> jax.Array:
    return _fused_fwd(logits, targets)[0]


def _fused_fwd(logits, targets):
    logits32 = logits.astype(jnp.float32)
    lse = jax.nn.logsumexp(logits32, axis=-1)
    picked = jnp.take_along_axis(logits32, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    return lse - picked, (logits, targets, lse)


def _fused_bwd(residuals, g):
    logits, targets, lse = residuals
    classes = jax.lax.broadcasted_iota(jnp.int32, logits.shape, logits.ndim - 1)
    hit = classes == targets[..., None].astype(jnp.int32)
    probs = jnp.exp(logits.astype(jnp.float32) - lse[..., None])
    grad = jnp.where(hit, probs - 1.0, probs) * g[..., None]
    return grad.astype(logits.dtype), None  # targets are integers: no cotangent


fused.defvjp(_fused_fwd, _fused_bwd)
