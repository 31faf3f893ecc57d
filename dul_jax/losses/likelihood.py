"""Negative log-likelihoods of discrete data, and the unit conversions between them.

Units: every loss here is in nats. Reported likelihoods are bits per dimension (bits/dim), where a
"dimension" is one discrete symbol (a pixel channel value, a byte, a character); some image papers
report nats per image instead (binarized MNIST), which is nats/dim times the number of dims.
"""

import math

import jax
import jax.numpy as jnp

LN2 = math.log(2.0)


def categorical_nll(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """-log softmax(logits)[target] in nats, per position.

    logits: (..., K) unnormalised log-probabilities; targets: (...) ints in [0, K).
    Computed in float32 as logsumexp(logits) - logits[target], which is stable for large logits.
    Training losses use `dul_jax.ops.cross_entropy.categorical_nll`, the same values with a
    choice of gradient kernel.
    """
    logits32 = logits.astype(jnp.float32)
    picked = jnp.take_along_axis(logits32, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    return jax.nn.logsumexp(logits32, axis=-1) - picked


def bits_per_dim(nats_per_example, num_dims: int):
    """bits/dim = (nats per example) / (num_dims * ln 2)."""
    return nats_per_example / (num_dims * LN2)
