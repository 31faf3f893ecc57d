"""The pmap data-parallel path (`parallelism='pmap'`), for code bases on that idiom.

Inside the step the state is *stacked*: every leaf has a leading axis of one replica per device,
and `lax.pmean` averages gradients and metrics (see train/state.py). Outside the step (checkpoints,
eval, sampling) it is the same replicated global array the jit path uses, so checkpoints are
interchangeable between the two paths. Both conversions reuse each device's own buffer: no copy
goes through the host.
"""

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

AXIS = 'batch'


def pmap_devices() -> list[jax.Device]:
    """The devices pmap maps over, in its order: this process's local devices."""
    return jax.local_devices()


def stack_replicas(tree):
    """Replicated global arrays -> stacked (n_devices, ...) arrays in pmap's device order."""
    devices = pmap_devices()
    mesh = jax.sharding.Mesh(np.array(devices), ('replica',))
    sharding = NamedSharding(mesh, PartitionSpec('replica'))

    def stack(x):
        by_device = {s.device: s.data for s in x.addressable_shards}
        return jax.make_array_from_single_device_arrays(
            (len(devices),) + x.shape, sharding, [by_device[d][None] for d in devices])
    return jax.tree.map(stack, tree)


def unstack_replicas(tree, shardings):
    """Stacked arrays -> replicated global arrays with the given (replicated) shardings."""
    def unstack(x, sharding):
        by_device = {s.device: s.data for s in x.addressable_shards}
        return jax.make_array_from_single_device_arrays(
            x.shape[1:], sharding, [by_device[d][0] for d in sharding.addressable_devices])
    return jax.tree.map(unstack, tree, shardings)


def data_parallel_step(step):
    """`step(state, batch) -> (state, metrics)`, which averages over AXIS itself, as a pmapped
    step on stacked states and split batches, returning one copy of its (equal) metrics."""
    mapped = jax.pmap(step, axis_name=AXIS, donate_argnums=(0,))

    def pmap_step(state, batch):
        state, metrics = mapped(state, batch)
        return state, jax.tree.map(lambda m: m[0], metrics)
    return pmap_step


def split_batch(batch: dict) -> dict:
    """(b, ...) host arrays -> (n_devices, b / n_devices, ...), as pmap takes them."""
    n = len(pmap_devices())
    return jax.tree.map(lambda x: np.asarray(x).reshape((n, -1) + np.shape(x)[1:]), batch)
