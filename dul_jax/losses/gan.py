"""GAN objectives on discriminator outputs (logits or critic values), each a pair of means:
(discriminator loss, generator loss). And the gradient penalties that regularise the critic.

- non_saturating: Goodfellow et al. 2014's D loss with the generator maximising log D(G(z)).
- hinge: Lim & Ye 2017, Miyato et al. 2018 (SNGAN).
- wasserstein: Arjovsky et al. 2017; with `gradient_penalty` it is WGAN-GP (Gulrajani et al. 2017).
- r1_penalty: Mescheder et al. 2018, the squared gradient norm on real data.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp

LOSSES = ('non_saturating', 'hinge', 'wasserstein')


def discriminator_loss(kind: str, real: jax.Array, fake: jax.Array) -> jax.Array:
    """The discriminator's (critic's) loss of its outputs on real and generated examples."""
    if kind == 'non_saturating':   # -log sigmoid(real) - log(1 - sigmoid(fake))
        return jnp.mean(jax.nn.softplus(-real)) + jnp.mean(jax.nn.softplus(fake))
    if kind == 'hinge':
        return jnp.mean(jax.nn.relu(1.0 - real)) + jnp.mean(jax.nn.relu(1.0 + fake))
    if kind == 'wasserstein':
        return jnp.mean(fake) - jnp.mean(real)
    raise ValueError(f'unknown GAN loss {kind!r}; one of {LOSSES}')


def generator_loss(kind: str, fake: jax.Array) -> jax.Array:
    """The generator's loss of the discriminator's outputs on its samples."""
    if kind == 'non_saturating':   # -log sigmoid(fake)
        return jnp.mean(jax.nn.softplus(-fake))
    if kind in ('hinge', 'wasserstein'):
        return -jnp.mean(fake)
    raise ValueError(f'unknown GAN loss {kind!r}; one of {LOSSES}')


def _input_gradients(critic: Callable, x: jax.Array) -> jax.Array:
    """d critic(x)_i / d x_i for every example i, flattened to (B, D). The critic must treat
    examples independently (no batch statistics), so the gradient of the sum is per example."""
    return jax.grad(lambda x: jnp.sum(critic(x)))(x).reshape(x.shape[0], -1)


def gradient_penalty(critic: Callable, real: jax.Array, fake: jax.Array,
                     rng: jax.Array) -> jax.Array:
    """WGAN-GP's E[(||grad critic(x_hat)||_2 - 1)^2] at x_hat = real + a (fake - real), one
    a ~ U[0, 1) per example (as igul222/improved_wgan_training). Differentiating it w.r.t. the
    critic's params is the double backprop. The 1e-12 keeps sqrt's gradient finite at 0."""
    a = jax.random.uniform(rng, (real.shape[0],) + (1,) * (real.ndim - 1), real.dtype)
    grads = _input_gradients(critic, real + a * (fake - real))
    norms = jnp.sqrt(jnp.sum(grads ** 2, axis=-1) + 1e-12)
    return jnp.mean((norms - 1.0) ** 2)


def r1_penalty(critic: Callable, real: jax.Array) -> jax.Array:
    """R1's E[||grad critic(x)||_2^2] on real examples (weighted by gamma / 2 by the caller)."""
    return jnp.mean(jnp.sum(_input_gradients(critic, real) ** 2, axis=-1))
