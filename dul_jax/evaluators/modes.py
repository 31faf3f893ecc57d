"""Mode coverage on the 2-D toy mixtures (eval.modes.*): of eval.modes.num samples (2,500 in
VEEGAN and PacGAN), how many of the mixture's modes have at least 20 within 3 standard
deviations, and the share of samples within 3 standard deviations of their nearest mode
(data/toy.py). The task provides `sample_points(params, rng, num)`."""

import jax
import numpy as np

from dul_jax.config import check
from dul_jax.data import toy
from dul_jax.sharding.mesh import to_host
from dul_jax.tasks.capabilities import SamplePoints


def validate(task) -> None:
    check(isinstance(task, SamplePoints) and toy.is_toy(task.spec.name),
          f'eval.evaluators has "modes", which needs a task that draws points '
          f'(Task.sample_points) on a toy data set, not "{task.name}" on "{task.spec.name}"; '
          'remove "modes".')
    check(task.cfg.eval.modes.num > 0, f'eval.modes.num must be positive, got '
                                       f'{task.cfg.eval.modes.num}.')


def evaluate(ev, params) -> dict[str, float]:
    task = ev.task
    num = task.cfg.eval.modes.num
    rng = jax.random.fold_in(jax.random.key(task.cfg.seed), 0x30DE)
    points = np.asarray(to_host(task.sample_points(params, rng, num)))
    coverage = toy.mode_coverage(points, task.spec.name)
    return {'modes': float(coverage['modes']), 'high_quality': coverage['high_quality']}
