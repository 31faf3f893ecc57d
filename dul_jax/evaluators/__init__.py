"""Evaluations shared by every family, named in `eval.evaluators` and configured under `eval.NAME`.

Each evaluator is a module here with `validate(task)` (UserError for a task or config it cannot
evaluate, checked before anything compiles) and `evaluate(ev, params) -> {metric: float}`, where
`ev` is the run's Evaluation (train/evaluation.py: eval batches already on the mesh, compiled
functions, the one mask-weighted mean; `ev.task` is the task). No evaluator opens the data
pipeline. They run once at the end of training and in `dul-jax eval`, and ask the task for a
capability (tasks/capabilities.py) with isinstance, never for its name.
"""

import importlib
import os
import pkgutil

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


def evaluate(ev, params) -> dict[str, float]:
    """The metrics of every configured evaluator, in the configured order."""
    metrics = {}
    for name in ev.cfg.eval.evaluators:
        metrics.update(_module(name).evaluate(ev, params))
    return metrics

