"""Multi-process (multi-host) start-up: one process per host, or per GPU, all running one program.

`initialize(cfg.distributed)` must run before anything touches a device. On TPU VMs, SLURM and
other clusters that JAX recognises, `distributed.enabled=True` is enough: JAX reads the
coordinator, process count and id from the environment. Elsewhere give them in the config (or
in JAX's own environment variables JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID).
"""

import os

import jax

from dul_jax.errors import UserError


def initialize(dist_cfg) -> None:
    """jax.distributed.initialize from the config's `distributed` block; a no-op unless enabled.

    Config values win over the JAX_* environment variables; what neither gives, JAX detects.
    Raises UserError (one sentence on what to set) if the processes cannot connect.
    """
    if not dist_cfg.enabled:
        return
    kwargs = {}
    coordinator = dist_cfg.coordinator or os.environ.get('JAX_COORDINATOR_ADDRESS', '')
    if coordinator:
        kwargs['coordinator_address'] = coordinator
    num = dist_cfg.num_processes or int(os.environ.get('JAX_NUM_PROCESSES', '0'))
    if num:
        kwargs['num_processes'] = num
    pid = dist_cfg.process_id if dist_cfg.process_id >= 0 else int(
        os.environ.get('JAX_PROCESS_ID', '-1'))
    if pid >= 0:
        kwargs['process_id'] = pid
    if dist_cfg.local_device_ids:
        kwargs['local_device_ids'] = list(dist_cfg.local_device_ids)
    try:
        jax.distributed.initialize(**kwargs)
    except (RuntimeError, ValueError) as e:
        raise UserError(f'jax.distributed.initialize({kwargs}) failed ({e}); set '
                        '--config.distributed.coordinator=HOST:PORT, .num_processes and '
                        '.process_id, or run where JAX detects the cluster.') from e
