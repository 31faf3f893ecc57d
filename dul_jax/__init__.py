"""dul_jax: deep unsupervised learning in JAX.

`dul_jax.load_run(workdir)` opens a trained run (config, data spec, model, eval params) for a
notebook; it is imported on first use, so `import dul_jax` itself loads nothing heavy.
"""

from importlib import metadata as _metadata

try:
    __version__ = _metadata.version('dul_jax')
except _metadata.PackageNotFoundError:  # run from a checkout that was never installed
    __version__ = 'unknown (not installed)'

__all__ = ['Run', 'load_run']


def __getattr__(name):
    # PEP 562: the train package (jax, flax, orbax) is imported only when these are asked for
    if name in __all__:
        from dul_jax.train import run
        return getattr(run, name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
