"""Probability math for latent-variable models: diagonal Gaussian posteriors, the analytic KL to a
standard normal prior, Bernoulli likelihoods, and importance-weighted bounds. Units: nats."""

import math

import jax
import jax.numpy as jnp

LOG_2PI = math.log(2.0 * math.pi)


def gaussian_log_prob(z, mean, log_var):
    """log N(z; mean, exp(log_var)) per element, in nats."""
    return -0.5 * (LOG_2PI + log_var + (z - mean) ** 2 * jnp.exp(-log_var))


def standard_normal_log_prob(z):
    """log N(z; 0, 1) per element, in nats."""
    return -0.5 * (LOG_2PI + z ** 2)


def kl_to_standard_normal(mean, log_var):
    """KL(N(mean, exp(log_var)) || N(0, 1)) per element, in nats:
    0.5 * (mean^2 + exp(log_var) - 1 - log_var) (Kingma & Welling 2014, appendix B)."""
    return 0.5 * (mean ** 2 + jnp.exp(log_var) - 1.0 - log_var)


def free_bits_kl(kl, free_nats: float):
    """The free-bits KL term (Kingma et al. 2016): each latent dimension's KL averaged over the
    batch, floored at `free_nats`, summed over dimensions; kl is (batch, dims). Returns the
    per-example value to add to the loss (the same for every example)."""
    if free_nats <= 0:
        return kl.sum(-1)
    floored = jnp.maximum(kl.mean(0), free_nats).sum()
    return jnp.broadcast_to(floored, kl.shape[:1])


def bernoulli_nll(logits, x):
    """-log Bernoulli(x; sigmoid(logits)) per element, in nats, for x in {0, 1}: softplus(logits)
    - x * logits, exact for large |logits|."""
    return jax.nn.softplus(logits) - x * logits


def log_mean_exp(x, axis: int = -1):
    """log(mean(exp(x))) along `axis`, computed as logsumexp(x) - log(n) (no overflow)."""
    return jax.nn.logsumexp(x, axis=axis) - math.log(x.shape[axis])


def iwae_bound(log_weights, axis: int = -1):
    """The importance-weighted lower bound on log p(x) (Burda et al. 2016) from k log weights
    log p(x, z_i) - log q(z_i | x) along `axis`: log (1/k) sum_i w_i. k = 1 is the ELBO estimate;
    its expectation rises with k towards log p(x)."""
    return log_mean_exp(log_weights, axis)
