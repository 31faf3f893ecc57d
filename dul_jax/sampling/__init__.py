"""Drawing from a trained model: one symbol from logits (every autoregressive sampler) here,
diffusion samplers in sampling/diffusion.py."""

import jax
import jax.numpy as jnp


def sample_logits(rng: jax.Array, logits: jax.Array, temperature: float = 1.0,
                  top_k: int = 0) -> jax.Array:
    """Sample ids from (..., K) logits; temperature 0 is greedy, top_k > 0 keeps the k best."""
    if temperature == 0.0:
        return jnp.argmax(logits, axis=-1)
    logits = logits.astype(jnp.float32) / temperature
    if 0 < top_k < logits.shape[-1]:
        kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    return jax.random.categorical(rng, logits, axis=-1)
