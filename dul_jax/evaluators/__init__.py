"""Evaluations shared by every family, named in `eval.evaluators` and configured under `eval.NAME`.

Each evaluator is a module here with `validate(task)` (UserError for a task or config it cannot
evaluate, checked before anything compiles) and `evaluate(task, params) -> {metric: float}`.
They run once at the end of training and in `dul-jax eval`, and ask the task for a capability
(`features`, `sample_images`, `bound_terms`; see tasks/base.py), never for its name.
"""

import importlib
import os
import pkgutil

from dul_jax import data
from dul_jax.errors import UserError


def names() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules([os.path.dirname(__file__)]))


def _module(name: str):
    if name not in names():
        raise UserError(f'unknown evaluator "{name}" in eval.evaluators; choose from '
                        f'{", ".join(names())}.')
    return importlib.import_module(f'dul_jax.evaluators.{name}')


def validate(task) -> None:
    """Every configured evaluator can evaluate `task` with its config."""
    for name in task.cfg.eval.evaluators:
        _module(name).validate(task)


def evaluate(task, params) -> dict[str, float]:
    """The metrics of every configured evaluator, in the configured order."""
    metrics = {}
    for name in task.cfg.eval.evaluators:
        metrics.update(_module(name).evaluate(task, params))
    return metrics


def first_examples(data_cfg, batch_size: int, examples: int):
    """Eval batches over the first `examples` eval examples (0: all), no larger than that count:
    a batch padded to eval.batch_size would cost as much as a full one."""
    return data.eval_batches(data_cfg, min(batch_size, examples) if examples else batch_size,
                             examples or None)
