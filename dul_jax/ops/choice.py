"""What `impl='auto'` means for an op: a table from backend to implementation."""

import jax


def resolve(op: str, impls: tuple[str, ...], auto: dict[str | None, str], impl: str,
            backend: str | None = None) -> str:
    """`impl` itself, or for `auto` the entry of `auto` for `backend` (default: jax's), where
    the key None stands for every backend the table does not name. ValueError for an unknown
    impl (configs are checked earlier, with a UserError, by `dul_jax.ops.validate`)."""
    if impl not in impls:
        raise ValueError(f'{op} impl must be one of {", ".join(impls)}, got {impl!r}')
    if impl != 'auto':
        return impl
    backend = backend or jax.default_backend()
    return auto.get(backend, auto[None])
