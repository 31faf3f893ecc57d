"""Losses of representation learning from two views of each example: SimCLR's NT-Xent (Chen et
al. 2020) and BYOL's normalised regression (Grill et al. 2020).

Negatives are the whole batch given: under `jax.jit` with a sharded batch that is the global
batch (XLA gathers the embeddings for the similarity matrix), never one device's shard.
"""

import jax
import jax.numpy as jnp
import optax


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    """Rows of `x` scaled to unit length (zero rows stay zero)."""
    x = x.astype(jnp.float32)
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps))


def nt_xent(z1: jax.Array, z2: jax.Array, temperature: float) -> jax.Array:
    """(2B,) NT-Xent of every anchor: z1[i] and z2[i] (each (B, D)) are two views of example i.

    Anchor i's positive is its other view; its negatives are the other 2B - 2 embeddings of both
    views. Cosine similarities over `temperature` are the logits of a 2B - 1 way softmax (an
    anchor never competes with itself). The mean over the 2B anchors is the paper's loss; the
    SimCLR TF code sums the two views' means, twice this.
    """
    z = l2_normalize(jnp.concatenate([z1, z2]))
    n = z1.shape[0]
    logits = (z @ z.T) / temperature
    logits = jnp.where(jnp.eye(2 * n, dtype=bool), -1e9, logits)  # finite: no inf * 0 in grads
    positives = jnp.concatenate([jnp.arange(n, 2 * n), jnp.arange(n)])
    return optax.softmax_cross_entropy_with_integer_labels(logits, positives)


def byol_regression(prediction: jax.Array, target: jax.Array) -> jax.Array:
    """(B,) 2 - 2 cos(prediction, target): the squared distance of the unit vectors. The target
    gets no gradient (it comes from the target network)."""
    p, z = l2_normalize(prediction), l2_normalize(jax.lax.stop_gradient(target))
    return 2.0 - 2.0 * jnp.sum(p * z, axis=-1)


def target_decay(step: jax.Array, total_steps: int, base: float) -> jax.Array:
    """BYOL's EMA rate of the target network: tau = 1 - (1 - base) (cos(pi k / K) + 1) / 2, from
    `base` at step 0 up to 1 at step K = total_steps."""
    progress = jnp.minimum(step.astype(jnp.float32) / max(total_steps, 1), 1.0)
    return 1.0 - (1.0 - base) * (jnp.cos(jnp.pi * progress) + 1.0) / 2.0
