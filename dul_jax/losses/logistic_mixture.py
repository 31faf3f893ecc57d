"""Discretized logistic mixture likelihood (PixelCNN++) of integer levels, in nats.

A value x in {0, ..., L-1} is rescaled to c(x) = (2x - (L-1)) / (L-1) in [-1, 1]; its bin is
[c(x) - 1/(L-1), c(x) + 1/(L-1)], except that the edge bins take the whole tails: level 0 owns
(-inf, c(0) + 1/(L-1)] and level L-1 owns [c(L-1) - 1/(L-1), +inf), so the L bin probabilities
sum to exactly 1. Each component k has weight softmax(w)_k, mean mu_k and log-scale s_k (clamped
below at -7), and its bin probability is sigmoid(b_plus) - sigmoid(b_minus) with
b_pm = (c(x) +- 1/(L-1) - mu_k) exp(-s_k).

Parameters are laid out along the last axis as [w_1..w_K, mu_1..mu_K, s_1..s_K] (3K values).

Numerics: PixelCNN++ computes sigmoid(b_plus) - sigmoid(b_minus) directly, which cancels
catastrophically when both are close to 0 or 1, and so falls back to "density at the bin centre
times the bin width" for probabilities under 1e-5. We use the exact identity (for b_minus < b_plus)
  sigmoid(a) - sigmoid(b) = sigmoid(a) * sigmoid(-b) * (1 - exp(b - a)),
  log(...) = -softplus(-a) - softplus(b) + log(-expm1(b - a)),
whose three terms are each computed without cancellation, so every bin (tiny or not) is accurate
to float32 relative precision and no fallback branch is needed (nor its gradient discontinuity).
"""

import jax
import jax.numpy as jnp
import numpy as np

MIN_LOG_SCALE = -7.0


def split_params(params: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(..., 3K) -> weight logits, means, log-scales, each (..., K); log-scales clamped."""
    if params.shape[-1] % 3:
        raise ValueError(f'mixture parameters need 3K values on the last axis, got {params.shape}')
    logits, means, log_scales = jnp.split(params.astype(jnp.float32), 3, axis=-1)
    return logits, means, jnp.maximum(log_scales, MIN_LOG_SCALE)


def bin_centres(levels: jax.Array, num_levels: int) -> jax.Array:
    """Integer levels 0..L-1 -> their bin centres (2 level - (L - 1)) / (L - 1) in [-1, 1], float32.

    Each centre is the exact value rounded once to float32, e.g. (2 k - 255) / 255 for L = 256:
    the same floats as PixelCNN++'s data, (x - 127.5) / 127.5 (openai/pixel-cnn, whose
    pixel_cnn_pp/nn.py discretized_mix_logistic_loss scores x in [-1, 1] with bins of half-width
    1/255). The form level * (2 / (L - 1)) - 1 rounds twice (207 of 256 centres off by an ulp),
    and so does the division in XLA, which turns x / constant into x * (1 / constant) (126 of 256
    off on CPU); so the quotient of the two exact integers is taken in numpy (float64, then
    rounded once) and looked up.
    """
    k = np.arange(num_levels, dtype=np.float64)
    table = ((2.0 * k - (num_levels - 1)) / (num_levels - 1)).astype(np.float32)
    return jnp.asarray(table)[levels]


def _log_bin_probs(levels: jax.Array, means: jax.Array, log_scales: jax.Array,
                   num_levels: int) -> jax.Array:
    """log P(level) under each logistic component; levels broadcast against (..., K)."""
    half_width = 1.0 / (num_levels - 1)
    centred = bin_centres(levels, num_levels) - means
    inv_scale = jnp.exp(-log_scales)
    upper = inv_scale * (centred + half_width)   # b_plus
    lower = inv_scale * (centred - half_width)   # b_minus
    log_cdf_upper = -jax.nn.softplus(-upper)      # log sigmoid(b_plus): bin 0 (left tail)
    log_sf_lower = -jax.nn.softplus(lower)        # log (1 - sigmoid(b_minus)): top bin
    # b_minus - b_plus = -2 exp(-s)/(L-1) < 0, so -expm1(.) is in (0, 1]
    log_mid = log_cdf_upper + log_sf_lower + jnp.log(-jnp.expm1(lower - upper))
    return jnp.where(levels == 0, log_cdf_upper,
                     jnp.where(levels == num_levels - 1, log_sf_lower, log_mid))


def discretized_logistic_mixture_nll(params: jax.Array, targets: jax.Array,
                                     num_levels: int) -> jax.Array:
    """-log P(targets) in nats, per position.

    params: (..., 3K) mixture parameters; targets: (...) integer levels in [0, num_levels).
    P(x) = sum_k softmax(w)_k * P_k(bin of x), with P_k the logistic bin probability above.
    """
    if num_levels < 2:
        raise ValueError(f'a discretized logistic needs at least 2 levels, got {num_levels}')
    logits, means, log_scales = split_params(params)
    per_component = _log_bin_probs(targets[..., None], means, log_scales, num_levels)
    log_weights = jax.nn.log_softmax(logits, axis=-1)
    return -jax.nn.logsumexp(log_weights + per_component, axis=-1)


def discretized_logistic_mixture_log_probs(params: jax.Array, num_levels: int) -> jax.Array:
    """log P(x) for every level x: (..., 3K) -> (..., num_levels), a normalised distribution.

    For sampling and entropy coding, which need the whole table rather than one level.
    """
    if num_levels < 2:
        raise ValueError(f'a discretized logistic needs at least 2 levels, got {num_levels}')
    logits, means, log_scales = split_params(params)
    levels = jnp.arange(num_levels)[:, None]                      # (L, 1) against (..., 1, K)
    per_component = _log_bin_probs(levels, means[..., None, :], log_scales[..., None, :],
                                   num_levels)                    # (..., L, K)
    log_weights = jax.nn.log_softmax(logits, axis=-1)[..., None, :]
    return jax.nn.logsumexp(log_weights + per_component, axis=-1)
