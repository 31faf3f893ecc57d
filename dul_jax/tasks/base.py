"""The interface between the trainer and a model family, and the registry of families by name.

A task binds a model, its training loss, its evaluation metrics and its sampler. The trainer knows
only this interface, so a new family is one task file, one model file and a config.
"""

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax

from dul_jax.data import DataSpec
from dul_jax.errors import UserError

Batch = dict[str, jax.Array]
TASKS: dict[str, type['Task']] = {}


def register(name: str) -> Callable[[type], type]:
    def add(cls):
        TASKS[name] = cls
        cls.name = name
        return cls
    return add


def make_task(cfg, spec: DataSpec) -> 'Task':
    if cfg.task not in TASKS:
        raise UserError(f'unknown task "{cfg.task}"; set --config.task to one of '
                        f'{", ".join(sorted(TASKS))}.')
    return TASKS[cfg.task](cfg, spec)


class Task:
    """Subclasses set `self.model` in __init__ and implement the methods below (all pure)."""
    name: str
    model: nn.Module

    def __init__(self, cfg, spec: DataSpec):
        self.cfg = cfg
        self.spec = spec

    def validate(self) -> None:
        """Raise UserError for a model config that cannot work with this data set."""

    def example_size(self) -> int:
        """Tokens (or pixels) per example, for throughput in tokens/s."""
        raise NotImplementedError

    def flops_per_example(self, params) -> float | None:
        """Analytic training FLOPs per example where the task knows them (the Transformer's
        6N + 12LTd per token); None lets the trainer use XLA's count of the step."""
        return None

    def init(self, rng: jax.Array, batch: Batch) -> Any:
        """Boxed (logically partitioned) params, from a batch of the right shapes."""
        raise NotImplementedError

    def loss(self, params, batch: Batch, rng: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Scalar training loss (nats) and scalar metrics, for value_and_grad."""
        raise NotImplementedError

    def eval_metrics(self, params, batch: Batch) -> dict[str, jax.Array]:
        """Per-example metrics, each of shape (batch,); the trainer averages them over the mask."""
        raise NotImplementedError

    def final_metrics(self, params) -> dict[str, float]:
        """Expensive evaluations run once at the end of training and by `dul-jax eval`, beyond
        the per-example eval metrics (e.g. a linear probe on frozen features). Default: none."""
        return {}

    def sample(self, params, rng: jax.Array, num: int) -> Any:
        """`num` samples as a numpy array (jitted inside)."""
        raise NotImplementedError

    def save_samples(self, samples, path_stem: str) -> list[str]:
        """Write samples to files named `path_stem.*`; return the paths."""
        raise NotImplementedError
