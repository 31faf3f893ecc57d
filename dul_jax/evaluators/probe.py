"""Frozen features judged by classifiers: a linear probe and k-NN (eval.probe.*).

Features of every train example fit the classifiers, which are scored on the eval split. The
task provides `features(params, levels) -> (B, D)`, e.g. the MAE encoder without masking.
"""

import jax
import numpy as np

from dul_jax import data
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


def split_features(task, params, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Features and labels of every example of `split`."""
    features = jax.jit(task.features)
    feats, labels = [], []
    for batch in data.eval_batches(task.cfg.data, task.cfg.eval.batch_size, split=split):
        keep = batch['mask'] > 0
        feats.append(np.asarray(features(params, batch['image']), np.float32)[keep])
        labels.append(np.asarray(batch['label'])[keep])
    return np.concatenate(feats), np.concatenate(labels)


def evaluate(task, params) -> dict[str, float]:
    train = split_features(task, params, task.spec.train_split)
    test = split_features(task, params, task.spec.eval_split)
    return {'probe_accuracy': linear_probe_accuracy(*train, *test),
            'knn_accuracy': knn_accuracy(*train, *test, k=task.cfg.eval.probe.knn_k)}
