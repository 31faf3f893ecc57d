"""What a run's config asks of this process, applied once at start-up by the entry points.

Library code never calls this behind the user's back: `dul-jax` and the benchmark scripts call
`start(cfg)` first thing, before anything touches a device, as a user's own script may.
"""

import os
import sys


def start(cfg, debug: bool = False) -> None:
    """Join the other processes (`distributed.*`), set how CPU computations are dispatched
    (`runtime.cpu_async_dispatch`) and where compiled steps are cached
    (`runtime.compilation_cache`), turn on `--debug`'s checks, and say where we run."""
    import chex
    import jax

    from dul_jax.sharding import distributed
    distributed.initialize(cfg.distributed)
    # Read when jax's CPU backend starts: the first device query below.
    jax.config.update('jax_cpu_enable_async_dispatch', bool(cfg.runtime.cpu_async_dispatch))
    distributed.check_same_config(cfg)   # the first device use: after the setting above
    cache = compilation_cache_dir(cfg.runtime.get('compilation_cache', 'auto'),
                                  jax.default_backend())
    if cache and not jax.config.jax_compilation_cache_dir:
        jax.config.update('jax_compilation_cache_dir', cache)
    if debug:
        jax.config.update('jax_debug_nans', True)
        chex.enable_asserts()
    if jax.process_index() == 0 and jax.default_backend() == 'cpu':
        print(f'no accelerator found: running on the CPU ({jax.device_count()} device(s)).',
              file=sys.stderr)


DEFAULT_COMPILATION_CACHE = '~/.cache/dul_jax/jax_cache'


def compilation_cache_dir(setting: str, backend: str) -> str:
    """The folder `runtime.compilation_cache` names on `backend` ('' for none)."""
    if setting == 'auto':
        setting = DEFAULT_COMPILATION_CACHE if backend in ('tpu', 'gpu') else ''
    if setting and '://' not in setting:
        setting = os.path.expanduser(setting)
    return setting
