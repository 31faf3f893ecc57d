"""Frozen features judged by classifiers: a linear probe and k-NN (eval.probe.*).

Features of every train example fit the classifiers, which are scored on the eval split (its
first eval.max_examples, where set). The
task provides `features(params, levels) -> (B, D)`, e.g. the MAE encoder without masking.
"""

import numpy as np

from dul_jax.config import check
from dul_jax.metrics.probes import knn_accuracy, linear_probe_accuracy
from dul_jax.tasks.capabilities import Features


def validate(task) -> None:
    check(isinstance(task, Features), f'eval.evaluators has "probe", but task "{task.name}" '
          'gives no features (Task.features); remove "probe".')
    check(task.spec.num_classes > 0, f'eval.evaluators has "probe", but data set '
          f'"{task.spec.name}" has no labels to probe for; remove "probe".')
    check(task.cfg.eval.probe.knn_k > 0,
          f'eval.probe.knn_k must be positive, got {task.cfg.eval.probe.knn_k}.')


def split_features(ev, task, params, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Features of `task` (the run's, or a stand-in with `features`) and labels of the examples
    of `split` (of the eval split, its first eval.max_examples, where set)."""
    out = ev.gather(f'probe:{split}:{id(task)}', lambda p, b, r: {
        'features': task.features(p, b['image']).astype(np.float32), 'label': b['label']},
        params, split)
    return out['features'], out['label']


def evaluate(ev, params) -> dict[str, float]:
    task = ev.task
    train = split_features(ev, task, params, task.spec.train_split)
    test = split_features(ev, task, params, task.spec.eval_split)
    return {'probe_accuracy': linear_probe_accuracy(*train, *test),
            'knn_accuracy': knn_accuracy(*train, *test, k=task.cfg.eval.probe.knn_k)}
