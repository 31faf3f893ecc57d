"""What a run's config asks of this process, applied once at start-up by the entry points.

Library code never calls this behind the user's back: `dul-jax` and the benchmark scripts call
`start(cfg)` first thing, before anything touches a device, as a user's own script may.
"""

import os
import sys

from dul_jax.errors import UserError


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
    check_platform(cfg.runtime.get('platform', ''), jax.default_backend())
    if jax.process_index() == 0:
        device = jax.devices()[0]
        print(f'platform {device.platform}, device kind {device.device_kind}: '
              f'{jax.device_count()} device(s) in {jax.process_count()} process(es).',
              file=sys.stderr)
        if jax.default_backend() == 'cpu':
            print('no accelerator found: running on the CPU.', file=sys.stderr)


PLATFORM_EXTRAS = {'tpu': 'tpu', 'gpu': 'cuda12'}


def check_platform(asked: str, found: str) -> None:
    """UserError, naming the extra to install, when `runtime.platform` asks for another
    platform than the one JAX found."""
    if asked not in ('', 'cpu', *PLATFORM_EXTRAS):
        raise UserError(f"runtime.platform={asked!r} is not one of '', cpu, tpu, gpu; set "
                        '--config.runtime.platform to one of those.')
    if asked and asked != found:
        extra = PLATFORM_EXTRAS.get(asked)
        fix = (f"install JAX for it on this host (pip install -e '.[{extra}]', or make venv "
               f'ACCEL={extra})' if extra else 'run without accelerators')
        raise UserError(f'runtime.platform={asked} but JAX found {found} devices only; {fix}, or '
                        "set --config.runtime.platform='' to run on what is here.")


DEFAULT_COMPILATION_CACHE = '~/.cache/dul_jax/jax_cache'


def compilation_cache_dir(setting: str, backend: str) -> str:
    """The folder `runtime.compilation_cache` names on `backend` ('' for none)."""
    if setting == 'auto':
        setting = DEFAULT_COMPILATION_CACHE if backend in ('tpu', 'gpu') else ''
    if setting and '://' not in setting:
        setting = os.path.expanduser(setting)
    return setting
