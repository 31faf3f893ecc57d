"""What a sharded run looks like: per-parameter shardings, bytes per device, and the collectives
XLA put into the compiled train step (`dul-jax inspect`)."""

import collections
import re

import jax
import numpy as np

COLLECTIVES = ('all-reduce', 'all-gather', 'reduce-scatter', 'all-to-all', 'collective-permute')
_DTYPE_BYTES = {'pred': 1, 's8': 1, 'u8': 1, 's16': 2, 'u16': 2, 'f16': 2, 'bf16': 2, 's32': 4,
                'u32': 4, 'f32': 4, 's64': 8, 'u64': 8, 'f64': 8}
# `%name = f32[8,64]{1,0} all-gather(...)`, or a tuple result `(f32[..], f32[..]) all-reduce(`;
# `-start` variants are the asynchronous forms of the same collectives.
_OP = re.compile(r'=\s*(\(.*?\)|\S+)\s+(' + '|'.join(COLLECTIVES) + r')(?:-start)?\(')
_SHAPE = re.compile(r'(\w+)\[([\d,]*)\]')
# Across TPU slices the compiler hands the data-parallel reduction to the DCN runtime as host
# transfers: `send((bf16[..], u32[], token[]) ...) ... _xla_megascale_transfer_type="ALL_REDUCE"`.
DCN = 'dcn all-reduce'
_DCN_SEND = re.compile(r'=\s*\((\w+\[[\d,]*\]).*?\ssend\(.*_xla_megascale_transfer_type='
                       r'"ALL_REDUCE"')


def _shape_bytes(text: str) -> int:
    total = 0
    for dtype, dims in _SHAPE.findall(text):
        size = int(np.prod([int(d) for d in dims.split(',') if d])) if dims else 1
        total += size * _DTYPE_BYTES.get(dtype, 4)
    return total


_COMPUTATION = re.compile(r'^(?:ENTRY )?%(\S+) .*\{$')
_WHILE = re.compile(r' while\(.*?condition=%([\w.\-]+), body=%([\w.\-]+)')
_TRIPS = re.compile(r'known_trip_count":\{"n":"(\d+)"')
# a loop condition `counter < N` (a scan from 0): the s32 constant N and the LT compare
_CONSTANT = re.compile(r'= s32\[\]\S* constant\((\d+)\)')
_CALLS = re.compile(r'(?:calls|to_apply|branch_computations)=\{?%([\w.\-]+)')
# `replica_groups={{0,1,2,3},{4,5,6,7}}`, or the iota form `replica_groups=[2,4]<=[8]`
_GROUPS = re.compile(r'replica_groups=(?:\{\{([\d,]*)\}|\[[\d,]*?(\d+)\]<=)')
# Bytes one device sends per byte of the result, for a group of n devices (ring algorithms).
_SENT_PER_RESULT_BYTE = {
    'all-reduce': lambda n: 2 * (n - 1) / n,
    'all-gather': lambda n: (n - 1) / n,
    'reduce-scatter': lambda n: n - 1,      # the result is one device's 1/n shard
    'all-to-all': lambda n: (n - 1) / n,
    'collective-permute': lambda n: 1,
}


def _group_size(line: str, num_devices: int) -> int:
    match = _GROUPS.search(line)
    if match is None:
        return num_devices           # `replica_groups={}`: every device
    if match.group(1) is not None:
        return len(match.group(1).split(','))
    return int(match.group(2))


def collectives(hlo_text: str, num_devices: int | None = None) -> dict[str, dict[str, int]]:
    """{collective: {'count': n, 'bytes': bytes of results}} executed by one run of the module,
    and with `num_devices` (the module's device count) also 'sent': the bytes each device sends
    for them by ring algorithms, from each op's replica group size. Reductions across TPU
    slices count as `DCN`, their 'sent' being the bytes each device hands to the network.

    A collective inside a while loop (the scanned layer stack) runs once per iteration, so it is
    counted trip-count times: XLA's known trip count, or else the limit N of a loop condition
    `counter < N` (what the TPU compiler leaves of a scan).
    """
    own, loops, calls, limits, entry, current = {}, {}, {}, {}, None, None
    for line in hlo_text.splitlines():
        header = _COMPUTATION.match(line)
        if header:
            current = header.group(1)
            entry = current if line.startswith('ENTRY') else entry
            own[current], loops[current], calls[current] = collections.Counter(), [], []
            continue
        if current is None or line.startswith('}'):
            continue
        constant = _CONSTANT.search(line)
        if constant:
            limits.setdefault(current, []).append(int(constant.group(1)))
        loop = _WHILE.search(line)
        if loop:
            trips = _TRIPS.search(line)
            loops[current].append((loop.group(2), int(trips.group(1)) if trips else loop.group(1)))
        else:
            calls[current].extend(_CALLS.findall(line))
        match = _OP.search(line)
        if match and '-done(' not in line:  # an async pair is counted at its -start
            op, nbytes = match.group(2), _shape_bytes(match.group(1))
            own[current][(op, 'count')] += 1
            own[current][(op, 'bytes')] += nbytes
            if num_devices:
                own[current][(op, 'sent')] += nbytes * _SENT_PER_RESULT_BYTE[op](
                    _group_size(line, num_devices))
        dcn = _DCN_SEND.search(line)
        if dcn:
            nbytes = _shape_bytes(dcn.group(1))
            for field in ('count', 'bytes', 'sent'):
                own[current][(DCN, field)] += 1 if field == 'count' else nbytes

    def trip_count(trips) -> int:
        """XLA's known trip count, else the one constant of a `counter < N` condition."""
        if isinstance(trips, int):
            return trips
        found = limits.get(trips, [])
        return found[0] if len(found) == 1 else 1

    def total(name: str) -> collections.Counter:
        result = collections.Counter(own.get(name, {}))
        for body, trips in loops.get(name, ()):
            for key, value in total(body).items():
                result[key] += trip_count(trips) * value
        for callee in calls.get(name, ()):
            result.update(total(callee))
        return result

    counts = total(entry) if entry else collections.Counter()
    fields = ('count', 'bytes', 'sent') if num_devices else ('count', 'bytes')
    return {op: {field: int(counts[(op, field)]) for field in fields}
            for op in COLLECTIVES + (DCN,) if counts[(op, 'count')]}


def bytes_per_device(tree) -> int:
    """Bytes that one device holds of a tree of global arrays (its largest shard per leaf)."""
    total = 0
    for x in jax.tree.leaves(tree):
        shard = x.sharding.shard_shape(x.shape)
        total += int(np.prod(shard)) * x.dtype.itemsize
    return total


def total_bytes(tree) -> int:
    """Bytes of a tree of arrays in all: global shapes, summed over every device's shards."""
    return int(sum(np.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(tree)))


def parameter_rows(setup) -> list[tuple[str, tuple, tuple, str, int]]:
    """(path, shape, logical axes, mesh PartitionSpec, bytes per device) per parameter."""
    abstract = setup.abstract_state()
    rows = []
    flat = jax.tree_util.tree_leaves_with_path(abstract.params)
    logical = jax.tree.leaves(setup.logical_specs.params,
                              is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
    for (path, leaf), names in zip(flat, logical):
        shard = leaf.sharding.shard_shape(leaf.shape)
        rows.append((jax.tree_util.keystr(path), leaf.shape, tuple(names),
                     str(leaf.sharding.spec), int(np.prod(shard)) * leaf.dtype.itemsize))
    return rows


def compiled_train_step(setup):
    """The train step compiled for abstract inputs (no state is allocated)."""
    abstract = setup.abstract_state()
    batch = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct((setup.cfg.train.batch_size,) + x.shape[1:], x.dtype,
                                       sharding=setup.batch_sharding),
        setup.dummy_batch())
    with setup.context():
        return setup.train_step().lower(abstract, batch).compile()


def report(setup) -> str:
    """The text `dul-jax inspect` prints."""
    setup.parallel.refuse('dul-jax inspect reports the shardings of the jit path')
    lines = [f'mesh {dict(setup.mesh.shape)}; rules: ' +
             ', '.join(f'{a}->{b}' for a, b in setup.rules if b is not None)]
    rows = parameter_rows(setup)
    width = max(len(r[0]) for r in rows)
    lines.append(f'{"parameter":<{width}}  {"shape":<22} {"logical axes":<40} {"sharding":<28} '
                 'bytes/device')
    for path, shape, names, spec, nbytes in rows:
        lines.append(f'{path:<{width}}  {shape!s:<22} {names!s:<40} {spec:<28} {nbytes:,}')
    abstract = setup.abstract_state()
    for name in ('params', 'opt_state'):
        tree = getattr(abstract, name)
        lines.append(f'{name}: {total_bytes(tree):,} bytes in all, '
                     f'{bytes_per_device(tree):,} per device')
    compiled = compiled_train_step(setup)
    memory = compiled.memory_analysis()
    if memory is not None:
        lines.append('compiled step memory per device: ' + ', '.join(
            f'{k} {getattr(memory, k):,}' for k in ('argument_size_in_bytes',
                                                     'output_size_in_bytes',
                                                     'temp_size_in_bytes',
                                                     'generated_code_size_in_bytes')
            if hasattr(memory, k)))
    found = collectives(compiled.as_text())
    lines.append('collectives in the compiled step (count, bytes of results):')
    for name in COLLECTIVES:
        if name in found:
            lines.append(f'  {name:<20} {found[name]["count"]:>4}  {found[name]["bytes"]:,}')
    if not found:
        lines.append('  none')
    return '\n'.join(lines)
