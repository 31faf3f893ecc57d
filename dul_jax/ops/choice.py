"""What `impl='auto'` means for an op: a table from backend to implementation."""

import jax


def resolve(op: str, impls: tuple[str, ...], auto: dict[str | None, str], impl: str,
            backend: str | None = None) -> str:
    """`impl` itself, or for `auto` the entry of `auto` for `backend` (default:
    `current_backend()`), where the key None stands for every backend the table does not name.
    ValueError for an unknown impl (configs are checked earlier, with a UserError, by
    `dul_jax.ops.validate`)."""
    if impl not in impls:
        raise ValueError(f'{op} impl must be one of {", ".join(impls)}, got {impl!r}')
    if impl != 'auto':
        return impl
    backend = backend or current_backend()
    return auto.get(backend, auto[None])


def current_backend() -> str:
    """The backend the code being traced will run on: the platform of the mesh in scope, else
    jax's default backend. They differ when a CPU host compiles ahead of time for a TPU or GPU
    topology (`dul-jax compile`), where `auto` must pick the target's kernels, not the host's."""
    device = jax.sharding.get_abstract_mesh().abstract_device
    platform = device.platform if device is not None else jax.default_backend()
    return 'gpu' if platform in ('cuda', 'rocm') else platform
