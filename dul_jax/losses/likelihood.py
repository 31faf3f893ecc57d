"""Negative log-likelihoods of discrete data, and the unit conversions between them.

Units: every loss here is in nats. Reported likelihoods are bits per dimension (bits/dim), where a
"dimension" is one discrete symbol (a pixel channel value, a byte, a character); some image papers
report nats per image instead (binarized MNIST), which is nats/dim times the number of dims.
"""

import math

import jax
import jax.numpy as jnp

LN2 = math.log(2.0)


@jax.custom_vjp
def categorical_nll(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """-log softmax(logits)[target] in nats, per position.

    logits: (..., K) unnormalised log-probabilities; targets: (...) ints in [0, K).
    Computed in float32 as logsumexp(logits) - logits[target], which is stable for large logits.
    The gradient, softmax(logits) - one_hot(target), is written by hand: autodiff's goes through
    take_along_axis, whose transpose scatters into a zero (..., K) array, and on an H100 at a
    32k vocabulary XLA then wrote float32 softmax x g (4.3 GB), scattered into it and read it
    back to convert it to bfloat16; here it is one elementwise pass, in the logits' dtype.
    """
    return _nll_fwd(logits, targets)[0]


def _nll_fwd(logits, targets):
    logits32 = logits.astype(jnp.float32)
    lse = jax.nn.logsumexp(logits32, axis=-1)
    picked = jnp.take_along_axis(logits32, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    return lse - picked, (logits, targets, lse)


def _nll_bwd(residuals, g):
    logits, targets, lse = residuals
    classes = jax.lax.broadcasted_iota(jnp.int32, logits.shape, logits.ndim - 1)
    hit = classes == targets[..., None].astype(jnp.int32)
    probs = jnp.exp(logits.astype(jnp.float32) - lse[..., None])
    grad = jnp.where(hit, probs - 1.0, probs) * g[..., None]
    return grad.astype(logits.dtype), None  # targets are integers: no cotangent


categorical_nll.defvjp(_nll_fwd, _nll_bwd)


def nats_to_bits(nats):
    return nats / LN2


def bits_per_dim(nats_per_example, num_dims: int):
    """bits/dim = (nats per example) / (num_dims * ln 2)."""
    return nats_per_example / (num_dims * LN2)


def nats_per_example(bits_per_dim_value, num_dims: int):
    """The inverse of `bits_per_dim`: nats per example (e.g. nats/image) from bits/dim."""
    return bits_per_dim_value * num_dims * LN2
