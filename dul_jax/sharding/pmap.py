"""The pmap data-parallel path (`parallelism='pmap'`), for code bases on that idiom; the only
module that knows it exists.

`choose` picks a run's path once (`prepare` keeps it as `Setup.parallel`), and the path adapts the
one train step of train/state.py:

  Partitioned   parallelism='jit' (and --debug): the step as it is; XLA partitions it over the
                mesh by the shardings of its inputs and inserts the reductions itself.
  DataParallel  parallelism='pmap': the step as one program per device, pmap's semantics in
                `jax.shard_map` (its current form in JAX) over the mesh: the state replicated, the
                batch split, and explicit `lax.pmean`s of the gradients, metrics and model state,
                added by wrapping the task's loss. Pure data parallelism in one process.

Both paths take and return the same global arrays (the state replicated on the mesh), so
checkpoints, eval and sampling do not know which one trained.
"""

import functools

import flax.linen as nn
import jax
from jax.sharding import PartitionSpec

from dul_jax.errors import UserError


def choose(cfg, task, mesh: jax.sharding.Mesh, batch_sharding, eager: bool):
    """The run's path: DataParallel for parallelism='pmap' (UserError where it cannot hold the
    run), else Partitioned. Eager (--debug) runs take the one unjitted step either way."""
    if cfg.parallelism != 'pmap' or eager:
        return Partitioned()
    processes = {d.process_index for d in mesh.devices.flat}
    if mesh.shape['fsdp'] != 1 or mesh.shape['tensor'] != 1 or len(processes) > 1 or \
            jax.process_count() > 1:
        raise UserError('parallelism="pmap" is pure data parallelism in one process here; use '
                        'the default parallelism="jit" for FSDP, tensor parallelism or several '
                        'processes.')
    if task.couples_batch:
        raise UserError(f'task "{task.name}" needs the whole batch in one loss (its examples are '
                        'each other\'s negatives or batch statistics), which parallelism="pmap" '
                        'splits over the devices; set --config.parallelism=jit.')
    return DataParallel(mesh, batch_sharding.spec)


class Partitioned:
    """parallelism='jit': the one step, for XLA to partition over the mesh."""

    def step(self, build, task):
        """`build(task)`: the train step, (state, batch) -> (state, metrics)."""
        return build(task)

    def refuse(self, doing: str) -> None:
        """Nothing: every command runs on this path."""


class DataParallel:
    """parallelism='pmap': each device runs the step on its share of the batch, with the whole
    state, and averages over the others; no sharding reaches inside."""

    def __init__(self, mesh: jax.sharding.Mesh, batch_spec: PartitionSpec):
        self.mesh, self.batch_spec, self.axes = mesh, batch_spec, tuple(mesh.axis_names)

    def step(self, build, task):
        """`build(task)` for each device: a global (state, batch) -> (state, metrics) whose
        state and metrics are replicated and whose batch is split over the devices."""
        per_device = build(_PerDevice(task, self.axes))

        def step(state, batch):
            # no logical axis rules while tracing: the devices' own blocks have no mesh to
            # constrain to (the rules still apply to eval, sampling and init outside the step)
            with nn.logical_axis_rules(()):
                return per_device(state, batch)
        # check_vma=False: pmap's semantics; the pmeans below make what leaves the step equal
        return jax.shard_map(step, mesh=self.mesh, in_specs=(PartitionSpec(), self.batch_spec),
                             out_specs=(PartitionSpec(), PartitionSpec()), check_vma=False)

    def refuse(self, doing: str) -> None:
        """UserError for a command that needs the jit path: `doing` says what it does."""
        raise UserError(f'{doing}; parallelism="pmap" replicates the state in one process: run '
                        'it with --config.parallelism=jit.')


class _PerDevice:
    """The task as each device's copy of the step sees it: its loss draws the device's own noise
    (the device index folded into the key) for its sub-batch and returns the metrics and model
    state averaged over the devices, and the gradients of its params are averaged as well. The
    rest of the task is the task's own."""

    def __init__(self, task, axes: tuple[str, ...]):
        self._task, self._axes = task, axes

    def __getattr__(self, name):
        return getattr(self._task, name)

    def loss(self, params, batch, rng, context):
        rng = jax.random.fold_in(rng, jax.lax.axis_index(self._axes))
        params = jax.tree.map(functools.partial(_mean_gradient, self._axes), params)
        out = self._task.loss(params, batch, rng, context)
        metrics, model_state = jax.lax.pmean((out.metrics, out.model_state), self._axes)
        return out._replace(metrics=metrics, model_state=model_state)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _mean_gradient(axes, x):
    """`x` itself, whose gradient is the mean of the devices' gradients."""
    return x


def _mean_gradient_fwd(axes, x):
    return x, None


def _mean_gradient_bwd(axes, _, gradient):
    return (jax.lax.pmean(gradient, axes),)


_mean_gradient.defvjp(_mean_gradient_fwd, _mean_gradient_bwd)
