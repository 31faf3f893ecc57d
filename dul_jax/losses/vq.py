"""Vector quantisation (VQ-VAE, van den Oord et al. 2017): nearest-code assignment, the
straight-through estimator, the codebook and commitment losses, and codebook usage.

Shapes: z (..., D) encoder outputs, codebook (K, D). Losses are squared distances in the
latent space (no likelihood units); `perplexity` is a count of codes (1 to K).
"""

import jax
import jax.numpy as jnp


def squared_distances(z: jax.Array, codebook: jax.Array) -> jax.Array:
    """||z - e_k||^2 for every code k: (..., K), computed as ||z||^2 - 2 z.e_k + ||e_k||^2 (one
    matmul, no (..., K, D) difference tensor), in float32."""
    z = z.astype(jnp.float32)
    codebook = codebook.astype(jnp.float32)
    return ((z ** 2).sum(-1, keepdims=True) - 2.0 * z @ codebook.T
            + (codebook ** 2).sum(-1))


def nearest_codes(z: jax.Array, codebook: jax.Array) -> jax.Array:
    """argmin_k ||z - e_k||^2: int32 (...,), the lowest index on ties."""
    return jnp.argmin(squared_distances(z, codebook), axis=-1).astype(jnp.int32)


def lookup(indices: jax.Array, codebook: jax.Array) -> jax.Array:
    """e_{indices}: (..., D)."""
    return jnp.take(codebook, indices, axis=0)


def quantize(z: jax.Array, codebook: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(z_q, indices): each vector replaced by its nearest code, z_q = e_k with
    k = argmin_k ||z - e_k||^2. No gradient flows through z_q to z (see `straight_through`)."""
    indices = nearest_codes(z, codebook)
    return lookup(indices, codebook), indices


def straight_through(z_e: jax.Array, z_q: jax.Array) -> jax.Array:
    """z_e + sg(z_q - z_e): z_q in the forward pass; in the backward pass the gradient with
    respect to z_q is passed to z_e unchanged (and none reaches the codebook)."""
    return z_e + jax.lax.stop_gradient(z_q - z_e)


def codebook_loss(z_e: jax.Array, z_q: jax.Array) -> jax.Array:
    """||sg(z_e) - e||^2 per vector, summed over D: (...,). Moves the chosen codes towards the
    encoder's outputs; its gradient reaches only the codebook."""
    return ((jax.lax.stop_gradient(z_e) - z_q) ** 2).sum(-1)


def commitment_loss(z_e: jax.Array, z_q: jax.Array, beta: float = 0.25) -> jax.Array:
    """beta ||z_e - sg(e)||^2 per vector, summed over D: (...,). Keeps the encoder's outputs
    close to their codes; its gradient reaches only the encoder. beta = 0.25 in the paper."""
    return beta * ((z_e - jax.lax.stop_gradient(z_q)) ** 2).sum(-1)


def code_frequencies(indices: jax.Array, num_codes: int,
                     weights: jax.Array | None = None) -> jax.Array:
    """p_k = the (weighted) mean over positions of one_hot(indices)_k: (K,), sums to 1. `weights`
    broadcast against `indices` (e.g. an eval mask (B,) as (B, 1, 1))."""
    one_hot = jax.nn.one_hot(indices, num_codes, dtype=jnp.float32)
    w = jnp.ones(indices.shape, jnp.float32) if weights is None else \
        jnp.broadcast_to(weights, indices.shape).astype(jnp.float32)
    counts = (one_hot * w[..., None]).reshape(-1, num_codes).sum(0)
    return counts / jnp.maximum(counts.sum(), 1e-12)


def perplexity(frequencies: jax.Array) -> jax.Array:
    """Codebook usage exp(H(p)) = exp(-sum_k p_k log p_k), with 0 log 0 = 0: 1 when one code is
    used, K when all K are used equally often."""
    p = frequencies.astype(jnp.float32)
    entropy = -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0))
    return jnp.exp(entropy)


# ---- the codebook as running averages (VQ-VAE paper, appendix A.1; Sonnet's VectorQuantizerEMA)

def ema_init(codebook: jax.Array) -> dict:
    """Running averages whose ratio is `codebook`: every code counted once at its place. (Sonnet
    debiases averages that start at zero instead, which moves a code no one picks to 0.)"""
    return {'cluster_size': jnp.ones(codebook.shape[:1], jnp.float32),
            'embed_sum': codebook.astype(jnp.float32)}


def ema_update(stats: dict, z_e: jax.Array, indices: jax.Array, decay: float) -> dict:
    """One step of N_k <- decay N_k + (1 - decay) n_k and m_k <- decay m_k + (1 - decay) sum of
    the z_e assigned to code k, over every vector of the batch (z_e (..., D), indices (...))."""
    num_codes = stats['cluster_size'].shape[0]
    one_hot = jax.nn.one_hot(indices.reshape(-1), num_codes, dtype=jnp.float32)
    z = jax.lax.stop_gradient(z_e).reshape(-1, z_e.shape[-1]).astype(jnp.float32)
    mix = lambda old, new: decay * old + (1.0 - decay) * new
    return {'cluster_size': mix(stats['cluster_size'], one_hot.sum(0)),
            'embed_sum': mix(stats['embed_sum'], one_hot.T @ z)}


def ema_codebook(stats: dict, epsilon: float = 1e-5) -> jax.Array:
    """e_k = m_k / N_k, with N_k Laplace-smoothed (N_k + eps) / (n + K eps) n so that a code
    with no assignments never divides by zero (Sonnet's epsilon, 1e-5)."""
    size = stats['cluster_size']
    n = size.sum()
    smoothed = (size + epsilon) / (n + size.shape[0] * epsilon) * n
    return stats['embed_sum'] / smoothed[:, None]


def restart_dead_codes(stats: dict, z_e: jax.Array, rng: jax.Array,
                       threshold: float) -> tuple[dict, jax.Array]:
    """Codes whose running count N_k is below `threshold` (assignments per step) move to encoder
    outputs of this batch drawn at random (Jukebox, Dhariwal et al. 2020) and count once again.
    Returns the new stats and how many codes moved."""
    z = jax.lax.stop_gradient(z_e).reshape(-1, z_e.shape[-1]).astype(jnp.float32)
    size = stats['cluster_size']
    dead = size < threshold
    picks = z[jax.random.randint(rng, size.shape, 0, z.shape[0])]
    return ({'cluster_size': jnp.where(dead, 1.0, size),
             'embed_sum': jnp.where(dead[:, None], picks, stats['embed_sum'])},
            dead.sum())
