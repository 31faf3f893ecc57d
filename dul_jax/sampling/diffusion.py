"""Samplers of a trained diffusion model: DDPM ancestral steps and DDIM, with classifier-free
guidance; pure functions of a denoiser, run inside one `lax` loop."""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from dul_jax.losses import diffusion as dl

SAMPLERS = ('ddpm', 'ddim')


def guided_output(apply_fn, x, t, labels, null_class: int, scale):
    """Classifier-free guidance: uncond + scale * (cond - uncond), both from one batched call.

    Scale 0 is the unconditional prediction, 1 the conditional one. Linear in the output, so it
    is the same in eps, v or x_0 space."""
    both = apply_fn(jnp.concatenate([x, x]), jnp.concatenate([t, t]),
                    jnp.concatenate([labels, jnp.full_like(labels, null_class)]))
    cond, uncond = jnp.split(both, 2)
    return uncond + scale * (cond - uncond)


def step_grid(num_steps: int, steps: int) -> np.ndarray:
    """`steps` + 1 evenly spaced integers from 0 to T (all of 0..T when steps = T)."""
    return np.round(np.linspace(0, num_steps, steps + 1)).astype(np.int32)


def sample(denoise: Callable, alpha_bars: jax.Array, x_T: jax.Array, rng: jax.Array,
           num_steps: int, steps: int, sampler: str, eta=0.0) -> jax.Array:
    """x_T -> x_0 over `step_grid(num_steps, steps)`.

    denoise(x_t, t) -> (x0, eps): the model's prediction at integer step t; alpha_bars: (T + 1,)
    with alpha_bar_0 = 1.
    ddim: x_prev = sqrt(ab_prev) x0 + sqrt(1 - ab_prev - sigma^2) eps + sigma z, with
      sigma^2 = eta^2 (1 - ab_prev) / (1 - ab) (1 - ab / ab_prev) (Song et al. 2021).
    ddpm: x_prev ~ q(x_prev | x_t, x0), the posterior at the predicted x_0 (Ho et al. 2020).
    The noise z at step t is drawn from fold_in(rng, t), so the two samplers with the same rng
    see the same noise, and ddim at eta = 1 on all T steps is ddpm.
    """
    grid = jnp.asarray(step_grid(num_steps, steps))

    def body(i, x):
        t, t_prev = grid[steps - i], grid[steps - i - 1]
        ab, ab_prev = alpha_bars[t], alpha_bars[t_prev]
        x0, eps = denoise(x, t)
        z = jax.random.normal(jax.random.fold_in(rng, t), x.shape, jnp.float32)
        if sampler == 'ddpm':
            mean, var = dl.posterior(x0, x, ab, ab_prev)
            return mean + jnp.sqrt(var) * z
        var = eta ** 2 * (1.0 - ab_prev) / (1.0 - ab) * (1.0 - ab / ab_prev)
        direction = jnp.sqrt(jnp.maximum(1.0 - ab_prev - var, 0.0))
        return jnp.sqrt(ab_prev) * x0 + direction * eps + jnp.sqrt(var) * z

    return jax.lax.fori_loop(0, steps, body, x_T)
