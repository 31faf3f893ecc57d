"""One trainer per workdir: an exclusive lock on WORKDIR/.lock, held while `train` runs.

An advisory `flock`, which the kernel drops when its process ends, so a killed or preempted
trainer never leaves it stuck. Only process 0 takes it (the others may be on other hosts).
"""

import contextlib
import fcntl
import os

from dul_jax.errors import UserError


@contextlib.contextmanager
def exclusive(workdir: str, enabled: bool = True):
    """Hold WORKDIR/.lock for the block; UserError at once if another process holds it."""
    if not enabled:
        yield
        return
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise UserError(f'--workdir {workdir} is a file, not a folder; pass a folder.')
    try:
        os.makedirs(workdir, exist_ok=True)
        handle = open(os.path.join(workdir, '.lock'), 'a+')  # noqa: SIM115 (held for the block)
    except OSError as e:
        raise UserError(f'--workdir {workdir} cannot be written ({e.strerror}); pass a folder '
                        'you can write to.') from None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or 'another process'
            raise UserError(f'another trainer ({holder}) is running in {workdir}; wait for it, '
                            'stop it, or pass another --workdir.') from None
        except OSError as e:  # a file system without locks
            raise UserError(f'--workdir {workdir} cannot be locked ({e.strerror}); use a local '
                            'or lock-capable folder.') from None
        handle.truncate(0)
        handle.write(f'pid {os.getpid()} on {os.uname().nodename}\n')
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
