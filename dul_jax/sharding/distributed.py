"""Multi-process (multi-host) start-up: one process per host, or per GPU, all running one program.

`initialize(cfg.distributed)` must run before anything touches a device. On TPU VMs, SLURM and
other clusters that JAX recognises, `distributed.enabled=True` is enough: JAX reads the
coordinator, process count and id from the environment. Elsewhere give them in the config (or
in JAX's own environment variables JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID).
"""

import hashlib
import json
import os
import sys

import jax
import numpy as np

from dul_jax.errors import UserError
from dul_jax.sharding import liveness, rendezvous


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
    timeout = dist_cfg.initialization_timeout_s
    heartbeat = dist_cfg.get('heartbeat_timeout_s', 60)
    for key, value in (('initialization_timeout_s', timeout), ('heartbeat_timeout_s', heartbeat)):
        if not (isinstance(value, int) and value > 0):
            raise UserError(f'distributed.{key} must be a positive number of seconds, got '
                            f'{value!r}.')
    where = (f'coordinator {coordinator or "(found by JAX)"}, process {pid if pid >= 0 else "?"} '
             f'of {num or "?"}')
    print(f'joining the other processes ({where}); waiting up to {timeout} s '
          '(--config.distributed.initialization_timeout_s) for all of them to start.',
          file=sys.stderr, flush=True)
    if coordinator and num and pid >= 0:   # where JAX finds the cluster itself, it waits alone
        rendezvous.roll_call(coordinator, num, pid, timeout)
    try:
        jax.distributed.initialize(**kwargs, initialization_timeout=timeout,
                                   heartbeat_timeout_seconds=liveness.jax_heartbeat_s(heartbeat))
    except (RuntimeError, ValueError) as e:
        reason = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        raise UserError(f'the processes could not join ({where}: {reason}); check that every '
                        'process was started with the same coordinator and process count, raise '
                        '--config.distributed.initialization_timeout_s if some start late, or run '
                        'where JAX detects the cluster.') from e


def check_same_config(cfg) -> None:
    """UserError on every process unless all were started with the same config (apart from
    what is per process: `distributed.*` and the local data paths). Collective: every process
    calls it after `initialize`; a no-op in a single process."""
    if jax.process_count() == 1:
        return
    shared = json.loads(json.dumps(cfg.to_dict(), default=list))  # tuples as lists, as in files
    shared.pop('distributed', None)
    for key in ('dir', 'tfds_dir'):   # local paths may differ between hosts
        shared.get('data', {}).pop(key, None)
    differ = _differ_from_process_0(json.dumps(shared, sort_keys=True))
    if differ:
        raise UserError(f'the {jax.process_count()} processes were started with different '
                        f'configs (process(es) {", ".join(map(str, differ))} differ from process '
                        '0); start every process with the same --config file and --config.KEY '
                        'values.')


def check_same_workdir(workdir: str) -> None:
    """UserError on every process unless all were given the same --workdir (they save one
    checkpoint together). Collective; a no-op in a single process."""
    if jax.process_count() == 1:
        return
    differ = _differ_from_process_0(workdir)
    if differ:
        raise UserError(f'process(es) {", ".join(map(str, differ))} were given another --workdir '
                        'than process 0; give every process the same --workdir, a folder they '
                        'all reach.')


def _differ_from_process_0(text: str) -> list[int]:
    """The processes whose `text` differs from process 0's (compared by digest)."""
    from jax.experimental import multihost_utils
    digest = hashlib.sha256(text.encode()).digest()
    # uint32 words: without jax_enable_x64 an int64 would be cut to 32 bits on the way
    words = multihost_utils.process_allgather(np.frombuffer(digest[:16], np.uint32))
    return [i for i in range(len(words)) if not np.array_equal(words[i], words[0])]
