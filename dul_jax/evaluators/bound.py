"""A variational bound on -log p(x) in bits/dim over the first `eval.bound.examples` eval
examples (eval.bound.*; eval.max_examples caps them). The task provides
`bound_terms(params, batch, rng)`: per-example terms in nats, shape (B,) each, that add up to the
bound (e.g. diffusion's prior, diffusion and decoder terms; a VAE's reconstruction and KL).
Each term is reported too, in bits/dim.
"""

import jax

from dul_jax.config import check
from dul_jax.losses.likelihood import bits_per_dim
from dul_jax.tasks.capabilities import Bounds


def validate(task) -> None:
    check(isinstance(task, Bounds), f'eval.evaluators has "bound", but task '
          f'"{task.name}" has no variational bound (Task.bound_terms); remove "bound".')
    check(task.cfg.eval.bound.examples >= 0,
          f'eval.bound.examples must be >= 0 (0: the whole eval split), got '
          f'{task.cfg.eval.bound.examples}.')


def evaluate(ev, params) -> dict[str, float]:
    task = ev.task
    rng = jax.random.fold_in(jax.random.key(task.cfg.seed), 0xB0D)
    terms, count = ev.mean('bound', task.bound_terms, params, rng,
                           limit=task.cfg.eval.bound.examples)
    dims = task.example_size()
    metrics = {f'bound_{name}_bpd': bits_per_dim(nats, dims) for name, nats in terms.items()}
    metrics['bound_bits_per_dim'] = bits_per_dim(sum(terms.values()), dims)
    metrics['bound_examples'] = count
    return metrics
