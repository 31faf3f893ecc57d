"""Posterior-collapse diagnostics of a latent-variable model over the eval split (its first
eval.max_examples, where set): active units (Burda et al. 2016: a dimension u is active when
Cov_x(E_q[z_u | x]) > 0.01) and the KL to the standard normal prior per latent dimension, in nats
per image (dimensions whose KL is ~0 carry no information about x). The task provides
`posterior(params, levels) -> (mean, log_var)`.
"""

import numpy as np

from dul_jax.config import check
from dul_jax.losses.latent import kl_to_standard_normal
from dul_jax.tasks.capabilities import Posterior

ACTIVE_THRESHOLD = 0.01


def validate(task) -> None:
    check(isinstance(task, Posterior), f'eval.evaluators has "posterior", but task '
          f'"{task.name}" has no Gaussian posterior (Task.posterior); remove "posterior".')


def evaluate(ev, params) -> dict[str, float]:
    task = ev.task

    def per_example(p, b, r):
        mean, log_var = task.posterior(p, b['image'])
        return {'mean': mean, 'kl': kl_to_standard_normal(mean, log_var)}
    out = ev.gather('posterior', per_example, params)
    means, kl = out['mean'].astype(np.float64), out['kl'].astype(np.float64).mean(0)
    variance = means.var(0)
    metrics = {'active_units': float(np.sum(variance > ACTIVE_THRESHOLD)),
               'kl_nats_per_image': float(kl.sum())}
    metrics.update({f'kl_dim_{u:02d}': float(v) for u, v in enumerate(kl)})
    return metrics
