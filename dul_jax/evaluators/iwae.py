"""The importance-weighted bound on -log p(x) (Burda et al. 2016) with k = eval.iwae.k latent
draws per image, over the first eval.iwae.examples eval images (0: all; eval.max_examples caps
it). The task provides
`log_importance_weights(params, batch, rng, num) -> (B, num)`; the k weights are drawn
`eval.iwae.chunk` at a time for `eval.iwae.batch_size` images (memory: batch_size x chunk decoder
passes) and combined with a running log-sum-exp, so k can be far larger than fits at once.
"""

import math
import time

import jax
import jax.numpy as jnp

from dul_jax.config import check
from dul_jax.losses.likelihood import bits_per_dim
from dul_jax.tasks.capabilities import ImportanceWeights


def validate(task) -> None:
    c = task.cfg.eval.iwae
    check(isinstance(task, ImportanceWeights), f'eval.evaluators has "iwae", but task '
          f'"{task.name}" has no latent variables to weight (Task.log_importance_weights); '
          'remove "iwae".')
    check(c.k > 0 and c.chunk > 0 and c.batch_size > 0 and c.examples >= 0,
          'eval.iwae.k, eval.iwae.chunk and eval.iwae.batch_size must be positive and '
          'eval.iwae.examples >= 0.')
    check(c.k % c.chunk == 0, f'eval.iwae.chunk={c.chunk} must divide eval.iwae.k={c.k}.')


def log_likelihood_bound(task, params, batch, rng, k: int, chunk: int) -> jax.Array:
    """(B,) the IWAE bound log (1/k) sum_i w_i, from k / chunk draws of `chunk` weights."""
    def one_chunk(_, i):
        log_w = task.log_importance_weights(params, batch, jax.random.fold_in(rng, i), chunk)
        return None, jax.nn.logsumexp(log_w, axis=-1)
    _, sums = jax.lax.scan(one_chunk, None, jnp.arange(k // chunk))
    return jax.nn.logsumexp(sums, axis=0) - math.log(k)


def evaluate(ev, params) -> dict[str, float]:
    task, c = ev.task, ev.task.cfg.eval.iwae
    start = time.perf_counter()
    rng = jax.random.fold_in(jax.random.key(task.cfg.seed), 0x1BAE)
    mean, count = ev.mean('iwae', lambda p, b, r: {
        'log_p': log_likelihood_bound(task, p, b, r, c.k, c.chunk)}, params, rng,
        limit=c.examples, batch_size=c.batch_size)
    nats = -mean['log_p']
    return {'iwae_nats_per_image': nats,
            'iwae_bits_per_dim': bits_per_dim(nats, task.example_size()),
            'iwae_k': float(c.k), 'iwae_examples': count,
            'iwae_seconds': time.perf_counter() - start}
