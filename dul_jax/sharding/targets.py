"""Compile targets: accelerator chips by their published figures, and the devices of a named TPU
topology or GPU node, made on any host (no accelerator needed) for ahead-of-time compilation.

Names: TPU slices as `KIND:TOPOLOGY` (`v5e:16x16`, `v5p:4x4x8`, `v6e:8x8`, `v4:4x4x4`), several
slices joined by the data-centre network as `SxKIND:TOPOLOGY` (`2xv5e:16x16`), GPU nodes as
`KIND:COUNT` (`h100:8`, `h200:8`). TPU devices come from libtpu (the `tpu` extra), GPU
devices from the CUDA plugin (the `cuda12` extra) with a target description kept beside this
file (`gpu_targets/KIND.txtpb`, the chip's facts as XLA's GpuTargetConfig text proto).
"""

import dataclasses
import math
import pathlib
import re

from dul_jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class Chip:
    """One accelerator chip's published figures (per chip)."""
    kind: str                 # our name: v5e, h100, ...
    platform: str             # 'tpu' or 'gpu'
    hbm_bytes: float          # memory per chip
    peak_flops: float         # dense bf16 FLOP/s
    hbm_bytes_s: float        # memory bandwidth
    link_bytes_s: float       # all-reduce bandwidth per chip (ICI, or NVLink one way)
    source: str


GB, GIB, TB = 1e9, 2**30, 1e12
# TPU figures: Cloud TPU system architecture pages (cloud.google.com/tpu/docs/v4, v5e,
# v5p-training, v6e). Link bandwidth is the pod's all-reduce bandwidth per chip, or half the
# bidirectional ICI figure per chip where no all-reduce figure is given; the two agree for v5e.
# GPU figures: NVIDIA H100 and H200 SXM datasheets (dense bf16, NVLink 900 GB/s bidirectional).
CHIPS = {c.kind: c for c in (
    Chip('v4', 'tpu', 32 * GIB, 275e12, 1200 * GB, 1.1e15 / 4096,
         'cloud.google.com/tpu/docs/v4: 275 TFLOP/s, 32 GiB, 1200 GB/s, all-reduce 1.1 PB/s '
         'per 4096-chip pod'),
    Chip('v5e', 'tpu', 16 * GIB, 197e12, 819 * GB, 400 * GB / 2,
         'cloud.google.com/tpu/docs/v5e: 197 TFLOP/s, 16 GiB, 819 GB/s, ICI 400 GB/s '
         'bidirectional'),
    Chip('v5p', 'tpu', 95 * GIB, 459e12, 2765 * GB, 1200 * GB / 2,
         'cloud.google.com/tpu/docs/v5p-training: 459 TFLOP/s, 95 GiB, 2765 GB/s, ICI 1200 GB/s '
         'bidirectional'),
    Chip('v6e', 'tpu', 32 * GB, 918e12, 1638 * GB, 800 * GB / 2,
         'cloud.google.com/tpu/docs/v6e: 918 TFLOP/s, 32 GB, 1638 GB/s, ICI 800 GB/s '
         'bidirectional'),
    Chip('h100', 'gpu', 80 * GB, 989e12, 3.35 * TB, 900 * GB / 2,
         'NVIDIA H100 SXM datasheet: 989 TFLOP/s dense bf16, 80 GB HBM3, 3.35 TB/s, NVLink '
         '900 GB/s'),
    Chip('h200', 'gpu', 141 * GB, 989e12, 4.8 * TB, 900 * GB / 2,
         'NVIDIA H200 SXM datasheet: 989 TFLOP/s dense bf16, 141 GB HBM3e, 4.8 TB/s, NVLink '
         '900 GB/s'),
)}
# libtpu's topology names for our chip kinds (`get_topology_desc(topology_name=...)`)
_TPU_NAMES = {'v4': 'v4', 'v5e': 'v5e', 'v5p': 'v5p', 'v6e': 'v6e'}
GPU_TARGETS = pathlib.Path(__file__).with_name('gpu_targets')
EXAMPLES = 'v5e:16x16, 2xv5e:16x16, v5p:4x4x8, v6e:8x8, v4:4x4x4, h100:8 or h200:8'


@dataclasses.dataclass(frozen=True)
class Target:
    """A parsed target name: the chip and how many, in which arrangement."""
    name: str
    chip: Chip
    shape: tuple[int, ...]    # TPU: the slice's chip grid; GPU: (count,)
    slices: int = 1           # TPU slices joined by DCN, each of `shape`

    @property
    def num_chips(self) -> int:
        return math.prod(self.shape) * self.slices


def parse(name: str) -> Target:
    """`v5e:16x16`, `2xv5e:16x16` or `h100:8` as a Target; one sentence naming the known forms
    otherwise."""
    match = re.fullmatch(r'(?:(\d+)x)?([a-z][a-z0-9]*):(\d+(?:x\d+){0,2})', name.strip().lower())
    chip = CHIPS.get(match.group(2)) if match else None
    if chip is None:
        raise UserError(f'--topology {name!r} is not a known target; give KIND:SHAPE with KIND '
                        f'one of {", ".join(CHIPS)}, e.g. {EXAMPLES}.')
    shape = tuple(int(n) for n in match.group(3).split('x'))
    slices = int(match.group(1) or 1)
    if chip.platform == 'gpu' and (len(shape) != 1 or slices != 1) or min(shape + (slices,)) < 1:
        raise UserError(f'--topology {name!r}: GPUs are KIND:COUNT (e.g. h100:8, or h100:16 for '
                        'two nodes) and every size must be positive.')
    return Target(name, chip, shape, slices)


def for_chips(kind: str, chips: int) -> Target:
    """`chips` chips of `kind` in the squarest shape the kind's interconnect takes: a 2-D grid
    for v5e and v6e, 3-D for v4 and v5p, a count for GPUs (e.g. v5e 256 -> v5e:16x16)."""
    chip = CHIPS.get(kind.lower())
    if chip is None or chips < 1:
        raise UserError(f'--kind {kind!r} --chips {chips}: give a positive chip count and a kind '
                        f'among {", ".join(CHIPS)}.')
    dims = 1 if chip.platform == 'gpu' else 2 if chip.kind in ('v5e', 'v6e') else 3
    shape = []
    for left in range(dims, 0, -1):   # the smallest factor at least the left-th root first
        rest = chips // math.prod(shape)
        size = next(n for n in range(1, rest + 1) if rest % n == 0 and n ** left >= rest)
        shape.append(size)
    shape = sorted(shape, key=lambda n: (n == 1, n))   # libtpu writes 2x2x1, not 1x2x2
    return parse(f'{chip.kind}:{"x".join(map(str, shape))}')


def devices(target: Target) -> list:
    """The target's devices, made without the hardware (one sentence if its toolchain is
    missing). The process must run on the CPU platform (`JAX_PLATFORMS=cpu`): the compile
    command sets it, so no local accelerator or driver is touched."""
    from jax.experimental import topologies
    if target.chip.platform == 'tpu':
        try:
            import libtpu  # noqa: F401
        except ImportError:
            raise UserError(f'compiling for {target.name} needs libtpu; install the tpu extra: '
                            "pip install -e '.[tpu]'.") from None
        topology = 'x'.join(map(str, target.shape))
        return list(topologies.get_topology_desc(
            platform='tpu', topology_name=f'{_TPU_NAMES[target.chip.kind]}:{topology}',
            num_slices=target.slices).devices)
    try:
        import jax_plugins.xla_cuda12  # noqa: F401
    except ImportError:
        raise UserError(f'compiling for {target.name} needs the CUDA plugin; install the cuda12 '
                        "extra: pip install -e '.[cuda12]'.") from None
    spec = (GPU_TARGETS / f'{target.chip.kind}.txtpb').read_text()
    per_node = min(target.num_chips, 8)
    if target.num_chips % per_node:
        raise UserError(f'--topology {target.name}: more than 8 GPUs must be whole nodes of 8.')
    return list(topologies.get_topology_desc(
        platform='cuda', topology=f'1x{target.num_chips // per_node}x{per_node}',
        target_config=spec).devices)
