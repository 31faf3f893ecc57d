"""A variational bound on -log p(x) in bits/dim over the first `eval.bound.examples` eval
examples (eval.bound.*). The task provides `bound_terms(params, batch, rng)`: per-example terms
in nats, shape (B,) each, that add up to the bound (e.g. diffusion's prior, diffusion and decoder
terms; a VAE's reconstruction and KL). Each term is reported too, in bits/dim.
"""

import jax
import numpy as np

from dul_jax import evaluators
from dul_jax.config import check
from dul_jax.losses.likelihood import bits_per_dim
from dul_jax.tasks.capabilities import Bounds


def validate(task) -> None:
    check(isinstance(task, Bounds), f'eval.evaluators has "bound", but task '
          f'"{task.name}" has no variational bound (Task.bound_terms); remove "bound".')
    check(task.cfg.eval.bound.examples >= 0,
          f'eval.bound.examples must be >= 0 (0: the whole eval split), got '
          f'{task.cfg.eval.bound.examples}.')


def evaluate(task, params) -> dict[str, float]:
    terms_fn = jax.jit(task.bound_terms)
    rng = jax.random.fold_in(jax.random.key(task.cfg.seed), 0xB0D)
    sums, count = {}, 0.0
    for i, batch in enumerate(evaluators.first_examples(task.cfg.data, task.cfg.eval.batch_size,
                                                        task.cfg.eval.bound.examples)):
        mask = batch.pop('mask')
        terms = jax.device_get(terms_fn(params, batch, jax.random.fold_in(rng, i)))
        for name, value in terms.items():
            sums[name] = sums.get(name, 0.0) + float(np.sum(np.asarray(value) * mask))
        count += float(mask.sum())
    dims = task.example_size()
    metrics = {f'bound_{name}_bpd': bits_per_dim(total / count, dims)
               for name, total in sums.items()}
    metrics['bound_bits_per_dim'] = bits_per_dim(sum(sums.values()) / count, dims)
    metrics['bound_examples'] = count
    return metrics
