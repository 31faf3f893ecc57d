"""Device meshes, the logical-to-mesh axis rules, and the shardings of the train state and batch.

This is the only module that knows about devices. Models name their axes logically
(`batch`, `embed`, `heads`, ...); the rule table below maps those names to the mesh axes
`data`, `fsdp` and `tensor`, so one config switch picks the parallelism:
  data=N               pure data parallelism (params replicated, batch split)
  fsdp=N               ZeRO-3: params and optimizer state split along `embed`, batch split too
  tensor=N             Megatron: attention heads and MLP hidden units split
and any product of them. With `slices=S` (several TPU slices joined by the data-centre network,
DCN, or groups of GPU nodes) the `data` axis also runs across slices, S times its size in one
slice; `fsdp` and `tensor` stay inside a slice, on its fast interconnect (ICI or NVLink).
"""

import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec

from dul_jax.errors import UserError

MESH_AXES = ('data', 'fsdp', 'tensor')

# In priority order; flax gives each array dimension the first rule whose mesh axes are still free
# in that array, so activations keep `embed` unsharded once `batch` has taken `fsdp`.
DEFAULT_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ('batch', ('data', 'fsdp')),
    ('embed', 'fsdp'),
    ('heads', 'tensor'),
    ('mlp', 'tensor'),
    ('vocab', None),      # small vocabularies here (2-256); add ('vocab', 'tensor') for big ones
    ('kv', None),
    ('length', None),
    ('layers', None),
    ('height', None),
    ('width', None),
    ('channels', None),
    ('conv_in', None),
    ('conv_out', 'tensor'),
)


def mesh_shape(mesh_cfg, num_devices: int) -> tuple[int, int, int]:
    """(data, fsdp, tensor) of the whole mesh from config: the sizes inside one slice, with at
    most one -1 taking the slice's remaining devices, and `data` multiplied by the slices."""
    slices = int(mesh_cfg.get('slices', 1))
    if slices < 1 or num_devices % slices:
        raise UserError(f'mesh.slices={slices} does not split the {num_devices} devices into '
                        'equal slices; give a positive divisor of the device count.')
    per_slice = num_devices // slices
    where = f'{per_slice} devices of each of the {slices} slices' if slices > 1 else (
        f'{num_devices} devices')
    sizes = [int(mesh_cfg[a]) for a in MESH_AXES]
    fill = [i for i, s in enumerate(sizes) if s == -1]
    if len(fill) > 1 or any(s == 0 or s < -1 for s in sizes):
        raise UserError(f'mesh sizes {dict(zip(MESH_AXES, sizes))} are invalid: give positive '
                        'sizes with at most one -1 (which takes the remaining devices).')
    known = math.prod(s for s in sizes if s != -1)
    if fill:
        if per_slice % known:
            raise UserError(f'the mesh axes other than -1 multiply to {known}, which does not '
                            f'divide the {where}; change --config.mesh.*.')
        sizes[fill[0]] = per_slice // known
    if math.prod(sizes) != per_slice:
        raise UserError(f'mesh {dict(zip(MESH_AXES, sizes))} has {math.prod(sizes)} devices but '
                        f'there are {where}; make --config.mesh.* multiply to {per_slice}.')
    return (sizes[0] * slices, sizes[1], sizes[2])


def split_slices(devices: Sequence[jax.Device], slices: int) -> list[list[jax.Device]]:
    """The devices of each slice: by the TPU's own slice index where the devices carry several,
    otherwise equal blocks of the devices in process order (GPU nodes, or CPU test devices)."""
    found = sorted({getattr(d, 'slice_index', 0) for d in devices})
    if len(found) > 1:
        if len(found) != slices:
            raise UserError(f'the devices form {len(found)} slices but mesh.slices={slices}; set '
                            f'--config.mesh.slices={len(found)}.')
        groups = [[d for d in devices if d.slice_index == i] for i in found]
        if len({len(g) for g in groups}) > 1:
            raise UserError(f'the {slices} slices have {sorted({len(g) for g in groups})} '
                            'devices; mesh.slices needs slices of one size.')
        return groups
    if slices == 1:
        return [list(devices)]
    ordered = sorted(devices, key=lambda d: d.process_index)   # stable: keeps each host's order
    size = len(ordered) // slices
    return [ordered[i * size:(i + 1) * size] for i in range(slices)]


def make_mesh(mesh_cfg, devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
    """A (data, fsdp, tensor) mesh with Auto axes (linen's logical constraints need Auto); with
    several slices, each slice's mesh is laid out alone and the slices are stacked along data."""
    devices = list(devices if devices is not None else jax.devices())
    data, fsdp, tensor = mesh_shape(mesh_cfg, len(devices))
    slices = int(mesh_cfg.get('slices', 1))
    axis_types = (AxisType.Auto,) * len(MESH_AXES)
    blocks = []
    for group in split_slices(devices, slices):
        shape = (data // slices, fsdp, tensor)
        block = jax.make_mesh(shape, MESH_AXES, axis_types=axis_types, devices=group).devices
        processes = [d.process_index for d in block.flat]
        if processes != sorted(processes):
            # A multi-host TPU slice in physical order interleaves the hosts; each process loads
            # a contiguous block of the batch, so keep its devices together (in make_mesh's order).
            block = np.array(sorted(block.flat, key=lambda d: d.process_index)).reshape(shape)
        blocks.append(block)
    return jax.sharding.Mesh(np.concatenate(blocks, axis=0), MESH_AXES, axis_types=axis_types)


def rules_from_config(cfg) -> tuple:
    """The rule table: DEFAULT_RULES, with `mesh.rules` entries (pairs) taking precedence."""
    overrides = tuple(tuple(r) for r in cfg.mesh.get('rules', ()) or ())
    return overrides + DEFAULT_RULES


def logical_to_shardings(logical_specs, mesh: jax.sharding.Mesh, rules) -> object:
    """Map a tree of logical PartitionSpecs to NamedShardings on `mesh`."""
    return nn.logical_to_mesh_sharding(logical_specs, mesh, rules)


def check_divisible(params, logical_specs, shardings) -> None:
    """Every sharded parameter dimension must split evenly over its mesh axes (one sentence if not).

    This is where "heads and MLP width must divide by mesh.tensor" is enforced, for every model.
    """
    def check(path, x, logical, sharding):
        for size, name, axes in zip(x.shape, logical, sharding.spec):
            if axes is None:
                continue
            axes = (axes,) if isinstance(axes, str) else axes
            ways = math.prod(sharding.mesh.shape[a] for a in axes)
            if size % ways:
                raise UserError(
                    f'parameter {jax.tree_util.keystr(path)} has {name!r} of size {size}, which '
                    f'does not split over mesh axes {"x".join(axes)}={ways}; choose model sizes '
                    f'divisible by {ways} or a smaller --config.mesh.{axes[0]}.')
    jax.tree_util.tree_map_with_path(check, params, logical_specs, shardings)


def batch_sharding(mesh: jax.sharding.Mesh, rules) -> NamedSharding:
    """Leading (batch) axis split over whatever mesh axes `batch` maps to; the rest replicated."""
    axes = nn.logical_to_mesh_axes(('batch',), rules)
    return NamedSharding(mesh, PartitionSpec(*axes))


def batch_divisor(mesh: jax.sharding.Mesh, rules) -> int:
    """How many ways the global batch is split (data x fsdp with the default rules)."""
    axes = nn.logical_to_mesh_axes(('batch',), rules)[0]
    axes = (axes,) if isinstance(axes, str) else (axes or ())
    return math.prod(mesh.shape[a] for a in axes)


def check_process_rows(sharding: NamedSharding, global_batch: int) -> None:
    """The data pipeline gives process i rows [i*b, (i+1)*b) of each global batch; the batch
    sharding must place exactly those rows on process i's devices. Checked for every process of
    the mesh, so an ahead-of-time compile for a multi-host topology checks each of its hosts."""
    owned = {}
    for device, index in sharding.devices_indices_map((global_batch,)).items():
        owned.setdefault(device.process_index, set()).update(
            range(*index[0].indices(global_batch)))
    per_process = global_batch // len(owned)
    first, second = sorted(owned)[:2] if len(owned) > 1 else (None, None)
    if first is not None and owned[first] & owned[second]:
        local = sum(d.process_index == first for d in sharding.mesh.devices.flat)
        raise UserError(f'processes {first} and {second} hold the same batch rows: a mesh axis '
                        f'that does not split the batch (tensor) spans hosts of {local} devices; '
                        f'keep --config.mesh.tensor at most {local}.')
    for rank, process in enumerate(sorted(owned)):
        start = rank * per_process
        if owned[process] != set(range(start, start + per_process)):
            raise UserError(
                f'process {process} holds batch rows {sorted(owned[process])[:4]}..., not the '
                f'block starting at {start} that it loads; order the mesh devices by process '
                '(the default) or change --config.mesh.rules for batch.')


def put_batch(batch: dict, sharding: NamedSharding) -> dict:
    """Assemble global arrays from this process's part of the batch (works for 1 or N processes)."""
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), batch)


def to_host(x) -> np.ndarray:
    """A global array as a numpy array on every process, also when it spans other processes'
    devices (where np.asarray fails): sampled images and texts, gathered for writing."""
    if getattr(x, 'is_fully_addressable', True):
        return np.asarray(x)
    from jax.experimental import multihost_utils
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
