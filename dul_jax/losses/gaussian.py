"""Probability math shared by families: Gaussian KL divergences and the discretized Gaussian
likelihood of data on an evenly spaced grid of levels. Units: nats, per element."""

import math

import jax
import jax.numpy as jnp


def gaussian_kl(mean1, var1, mean2, var2):
    """KL(N(mean1, var1) || N(mean2, var2)) per element, in nats:
    0.5 * (log(var2 / var1) + (var1 + (mean1 - mean2)^2) / var2 - 1)."""
    return 0.5 * (jnp.log(var2) - jnp.log(var1) + (var1 + (mean1 - mean2) ** 2) / var2 - 1.0)


def levels_to_unit(levels, num_levels: int):
    """Integer levels 0..K-1 to evenly spaced values in [-1, 1]: 2 k / (K - 1) - 1."""
    return levels.astype(jnp.float32) * (2.0 / (num_levels - 1)) - 1.0


def discretized_gaussian_nll(x, mean, std, num_levels: int):
    """-log P(x) per element, in nats, where x in [-1, 1] lies on the grid of `num_levels` values
    and P is the mass N(mean, std^2) puts on x's bin, [x - d, x + d] with d = 1 / (K - 1), the two
    end bins reaching to -inf and +inf (DDPM's decoder L_0, for any number of levels)."""
    half = 1.0 / (num_levels - 1)
    upper = (x + half - mean) / std
    lower = (x - half - mean) / std
    log_cdf_upper = jax.scipy.special.log_ndtr(upper)          # log P(z < upper)
    log_sf_lower = jax.scipy.special.log_ndtr(-lower)           # log P(z > lower)
    # log(Phi(upper) - Phi(lower)), computed from the side where it does not cancel
    mid = jnp.where(lower > 0,
                    log_sf_lower + _log1mexp(jax.scipy.special.log_ndtr(-upper) - log_sf_lower),
                    log_cdf_upper + _log1mexp(jax.scipy.special.log_ndtr(lower) - log_cdf_upper))
    logp = jnp.where(x < -1.0 + half, log_cdf_upper,
                     jnp.where(x > 1.0 - half, log_sf_lower, mid))
    return -logp


def _log1mexp(a):
    """log(1 - exp(a)) for a <= 0, stable on both sides of -log 2."""
    a = jnp.minimum(a, -1e-30)
    return jnp.where(a > -math.log(2.0), jnp.log(-jnp.expm1(a)), jnp.log1p(-jnp.exp(a)))
