"""Likelihoods of discrete pixel levels from a decoder's raw outputs, shared by the latent-variable
families: 'bernoulli' (2 levels; one logit per value), 'categorical' (one logit per level) and
'logistic_mixture' (3K parameters per value, logistic_mixture.py). Units: nats."""

import jax
import jax.numpy as jnp

from dul_jax.losses.latent import bernoulli_nll
from dul_jax.losses.likelihood import categorical_nll
from dul_jax.losses.logistic_mixture import (
    discretized_logistic_mixture_log_probs,
    discretized_logistic_mixture_nll,
)

LIKELIHOODS = ('bernoulli', 'categorical', 'logistic_mixture')


def outputs_per_value(kind: str, num_levels: int, mixtures: int) -> int:
    """How many numbers the decoder gives each pixel value."""
    return {'bernoulli': 1, 'categorical': num_levels, 'logistic_mixture': 3 * mixtures}[kind]


def nll(kind: str, out, levels, num_levels: int):
    """-log p(level) per pixel value: out (..., outputs_per_value), levels (...) ints."""
    x = levels.astype(jnp.int32)
    if kind == 'bernoulli':
        return bernoulli_nll(out[..., 0], x.astype(jnp.float32))
    if kind == 'categorical':
        return categorical_nll(out, x)
    return discretized_logistic_mixture_nll(out, x, num_levels)


def log_probs(kind: str, out, num_levels: int):
    """log p(l) of every level l: (..., outputs_per_value) -> (..., num_levels), normalised."""
    if kind == 'bernoulli':
        return jnp.stack([jax.nn.log_sigmoid(-out[..., 0]), jax.nn.log_sigmoid(out[..., 0])], -1)
    if kind == 'categorical':
        return jax.nn.log_softmax(out, axis=-1)
    return discretized_logistic_mixture_log_probs(out, num_levels)


def mean_in_unit_range(level_log_probs):
    """The mean level in [0, 1], sum_l p(l) l / (L - 1), from (..., L) log-probabilities."""
    num_levels = level_log_probs.shape[-1]
    levels = jnp.arange(num_levels, dtype=jnp.float32)
    return (jnp.exp(level_log_probs) * levels).sum(-1) / (num_levels - 1)
