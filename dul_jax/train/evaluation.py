"""Evaluation on the run's mesh: the one way eval examples reach the task and the evaluators.

An `Evaluation` (from a Setup) reads the eval batches, each process its own rows of every global
batch, puts them on the mesh with the batch sharding, compiles each per-example function once, and
reduces with one mask-weighted mean (`masked_sums`). It is the one place that decides which eval
examples are used: the first `eval.max_examples` (0: all of them), or fewer where an evaluator
asks for fewer (`eval.iwae.examples`, `eval.bound.examples`). The global batches, and so every
metric, are the same whatever the number of processes and devices (data/pipeline.py).
"""

import math
from collections.abc import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from dul_jax import data
from dul_jax.sharding.mesh import batch_divisor, to_host

PerExample = Callable[..., dict]   # (params, batch, rng) -> {name: (B,) array}


def masked_sums(per_example: PerExample) -> PerExample:
    """(params, batch, rng) -> {name: sum over the batch of value * mask} plus 'count', the sum of
    the mask: what `means` turns into averages over the real examples of many batches."""
    def sums(params, batch, rng):
        mask = batch['mask'].astype(jnp.float32)
        values = per_example(params, {k: v for k, v in batch.items() if k != 'mask'}, rng)
        return {**{k: jnp.sum(v * mask) for k, v in values.items()}, 'count': jnp.sum(mask)}
    return sums


def means(totals: dict) -> tuple[dict[str, float], float]:
    """({name: mean}, count) from the summed outputs of `masked_sums` (host or device arrays)."""
    totals = jax.device_get(totals)
    count = float(totals['count'])
    return {k: float(v) / count for k, v in totals.items() if k != 'count'}, count


class Evaluation:
    """Eval batches on the mesh, compiled per-example functions and their mask-weighted means, for
    the trainer's eval, the evaluators (evaluators/) and the pictures of eval examples.

    `max_examples` (default eval.max_examples; 0: all) caps every use of the eval split. Use it
    inside `setup.context()`; every process must make the same calls (batches are global).
    """

    def __init__(self, setup, max_examples: int | None = None):
        self.setup, self.task, self.cfg = setup, setup.task, setup.cfg
        self.max_examples = self.cfg.eval.max_examples if max_examples is None else max_examples
        self._compiled: dict[str, Callable] = {}

    def examples(self, limit: int = 0, split: str | None = None) -> int | None:
        """How many of the first examples of `split` a use sees: of the eval split, the smaller
        of eval.max_examples and `limit` where set (0 is "not set"); of another split (the train
        split a probe fits on), `limit` alone. None: the whole split."""
        capped = split is None or split == self.setup.spec.eval_split
        caps = [n for n in (self.max_examples if capped else 0, limit) if n]
        return min(caps) if caps else None

    def batches(self, split: str | None = None, limit: int = 0,
                batch_size: int | None = None) -> Iterator[dict]:
        """Global batches (with 'mask') of the first `examples(limit, split)` examples of `split`
        (default the eval split), sharded over the mesh; this process reads only its rows.

        The batch is eval.batch_size (or `batch_size`), no larger than the examples used (a batch
        padded far past them would cost as much as a full one), rounded up to a multiple of the
        mesh's batch shards and of the processes."""
        count = self.examples(limit, split)
        size = batch_size or self.cfg.eval.batch_size
        if count:
            size = min(size, count)
        processes = jax.process_count()
        unit = math.lcm(batch_divisor(self.setup.mesh, self.setup.rules), processes)
        size = -(-size // unit) * unit
        for batch in data.eval_batches(self.cfg.data, size // processes, count, split,
                                       process_index=jax.process_index(),
                                       process_count=processes):
            yield self.setup.put_batch(batch)

    def compiled(self, name: str, fn: Callable) -> Callable:
        """`jax.jit(fn)` for fn(params, batch, rng), compiled once per name on this Evaluation,
        with the params and batch in the run's shardings."""
        if name not in self._compiled:
            self._compiled[name] = jax.jit(fn, in_shardings=(
                self.setup.state_shardings.params, self.setup.batch_sharding, None))
        return self._compiled[name]

    def mean(self, name: str, per_example: PerExample, params, rng: jax.Array,
             split: str | None = None, limit: int = 0,
             batch_size: int | None = None) -> tuple[dict[str, float], float]:
        """({name: mask-weighted mean over the examples}, number of examples) of
        `per_example(params, batch, rng)`, with batch i's key `fold_in(rng, i)`."""
        step = self.compiled(name, masked_sums(per_example))
        totals = None
        for i, batch in enumerate(self.batches(split, limit, batch_size)):
            sums = step(params, batch, jax.random.fold_in(rng, i))
            totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
        return means(totals)

    def gather(self, name: str, per_example: PerExample, params, split: str | None = None,
               limit: int = 0) -> dict[str, np.ndarray]:
        """{name: host array of `per_example(params, batch, rng)` over the real examples, in the
        split's stored order}, on every process (for fits on the host: probes, posteriors)."""
        step = self.compiled(name, lambda p, b, r: {
            'mask': b['mask'], **per_example(p, {k: v for k, v in b.items() if k != 'mask'}, r)})
        parts: dict[str, list] = {}
        for batch in self.batches(split, limit):
            out = jax.tree.map(to_host, step(params, batch, None))
            keep = np.asarray(out.pop('mask')) > 0
            for key, value in out.items():
                parts.setdefault(key, []).append(np.asarray(value)[keep])
        return {key: np.concatenate(values) for key, values in parts.items()}

    def first_examples(self, num: int) -> dict:
        """The first `num` eval examples as one host batch (no 'mask'), the same on every process:
        what pictures of eval examples (reconstructions, views) are made of."""
        batch = next(data.eval_batches(self.cfg.data, num, max_examples=num))
        return {k: v for k, v in batch.items() if k != 'mask'}
