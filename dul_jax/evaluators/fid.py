"""Domain FID of a model's samples (eval.fid.*): the Frechet distance, precision and recall on the
features of a classifier trained on the same data set (metrics/domain_classifier.py; train one
with `python experiments/domain_fid.py train-classifier`), beside held-out real images and a
Gaussian fitted to the pixels as references. Comparable between runs on one data set, not with
published (Inception) FIDs. The task provides `sample_images(params, rng, num)` as uint8 levels.
"""

import os

import jax
import numpy as np

from dul_jax.config import check
from dul_jax.metrics import domain_classifier
from dul_jax.sharding.mesh import to_host
from dul_jax.tasks.capabilities import SampleImages


def validate(task) -> None:
    c = task.cfg.eval.fid
    check(isinstance(task, SampleImages), f'eval.evaluators has "fid", but task '
          f'"{task.name}" draws no images (Task.sample_images); remove "fid".')
    check(os.path.isfile(os.path.join(c.classifier, 'classifier.json')),
          f'eval.fid.classifier="{c.classifier}" holds no trained classifier; train one with '
          '`python experiments/domain_fid.py train-classifier --out DIR` and set it to DIR.')
    check(c.num >= 0, f'eval.fid.num must be >= 0 (0: as many as the eval split), got {c.num}.')


def evaluate(ev, params) -> dict[str, float]:
    task = ev.task
    c = task.cfg.eval.fid
    num = c.num or task.spec.num_eval
    rng = jax.random.fold_in(jax.random.key(task.cfg.seed), 0xF1D)
    samples = np.asarray(to_host(task.sample_images(params, rng, num)), np.uint8)
    labels = task.sample_labels(num)   # what a conditional task's samples were drawn for
    result = domain_classifier.score(c.classifier, task.cfg.data, samples, seed=task.cfg.seed,
                                     labels=None if labels is None else np.asarray(labels))
    metrics = {'fid_examples': float(num)}
    for name, prefix in (('samples', 'fid'), ('real', 'fid_real'), ('gaussian', 'fid_gaussian')):
        metrics[prefix] = result[name]['fid']
        metrics[f'{prefix}_precision'] = result[name]['precision']
        metrics[f'{prefix}_recall'] = result[name]['recall']
    if labels is not None:   # mode collapse onto some classes shows here
        metrics['fid_label_accuracy'] = result['samples']['label_accuracy']
    return metrics
