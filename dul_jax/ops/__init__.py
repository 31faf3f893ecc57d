"""Hand-written kernels, one module per op, each with a plain-JAX `reference` beside its fast
implementation(s), chosen per op by name (`impl`).

`auto` picks the implementation measured fastest on the current backend (benchmarks/README.md,
"Kernels (dul_jax/ops/)"); `reference` is plain JAX under autodiff. Models take a `Kernels` and
call each op with `impl=kernels.<op>`:

    from dul_jax.ops.attention import attention
    from dul_jax.ops.cross_entropy import categorical_nll
    from dul_jax.ops.gelu import gelu
    from dul_jax.ops.matmul import dense_dot_general, matmul
    from dul_jax.ops.positions import add_positions

(Import the functions from their modules: `dul_jax.ops.attention` is the module.)
"""

import dataclasses
from collections.abc import Mapping

import jax.numpy as jnp

from dul_jax.errors import UserError
from dul_jax.ops import attention, choice, cross_entropy, gelu, matmul, positions

_MODULES = {'attention': attention, 'matmul': matmul, 'gelu': gelu, 'positions': positions,
            'cross_entropy': cross_entropy}
IMPLS: dict[str, tuple[str, ...]] = {op: module.IMPLS for op, module in _MODULES.items()}


@dataclasses.dataclass(frozen=True)
class Kernels:
    """The implementation of each op: `auto`, `reference` or one of the op's fast paths (IMPLS).
    Frozen and hashable, so it can be a Flax module attribute."""
    attention: str = 'auto'
    matmul: str = 'auto'
    gelu: str = 'auto'
    positions: str = 'auto'
    cross_entropy: str = 'auto'

    def __post_init__(self):
        validate(dataclasses.asdict(self))

    @classmethod
    def from_config(cls, ops_cfg: Mapping | None) -> 'Kernels':
        """From the config's `ops` block (keys missing from it stay `auto`)."""
        ops_cfg = dict(ops_cfg or {})
        validate(ops_cfg)
        return cls(**ops_cfg)

    @classmethod
    def reference(cls) -> 'Kernels':
        """Plain JAX everywhere."""
        return cls(**dict.fromkeys(IMPLS, 'reference'))


def validate(ops_cfg: Mapping | None) -> None:
    """Raises UserError, naming the key and the allowed values, for an unknown op or impl."""
    for op, impl in dict(ops_cfg or {}).items():
        if op not in IMPLS:
            raise UserError(f'ops.{op} is not an op; the ops are {", ".join(IMPLS)}.')
        if impl not in IMPLS[op]:
            raise UserError(f'ops.{op} must be one of {", ".join(IMPLS[op])}, got "{impl}".')


def resolved(kernels: Kernels = Kernels(), backend: str | None = None,
             dtype=jnp.float32) -> dict[str, str]:
    """What each op runs on `backend` (default: `choice.current_backend()`) for inputs of
    `dtype`, for logs and benchmarks. Attention's choice also depends on the sequence length:
    both cases are named where they differ."""
    backend = backend or choice.current_backend()
    chosen = {op: _MODULES[op].resolve(getattr(kernels, op), backend=backend)
              for op in IMPLS if op != 'attention'}
    aligned = attention.resolve(kernels.attention, dtype, 64, backend)
    other = attention.resolve(kernels.attention, dtype, 65, backend)
    chosen['attention'] = aligned if aligned == other else (
        f'{aligned} (length % 64 == 0), else {other}')
    return {op: chosen[op] for op in IMPLS}
