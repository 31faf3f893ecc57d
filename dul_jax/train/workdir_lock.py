"""One trainer per workdir: WORKDIR/.lock, held while `train` runs. Only process 0 takes it (the
others may be on other hosts).

Local folders use an advisory `flock`, which the kernel drops when its process ends, so a killed
trainer never leaves it stuck. Object stores have no locks: there .lock is a lease, created only
if absent (an atomic precondition on GCS), renewed every LEASE_RENEW_S by a thread and deleted on
exit; a lease not renewed for LEASE_TTL_S (its holder was killed) is taken over.
"""

import contextlib
import fcntl
import os
import sys
import threading
import time
import urllib.parse
import uuid

from dul_jax import storage
from dul_jax.errors import UserError

LEASE_TTL_S = 300.0
LEASE_RENEW_S = 60.0


@contextlib.contextmanager
def exclusive(workdir: str, enabled: bool = True):
    """Hold WORKDIR/.lock for the block; UserError at once if another trainer holds it."""
    if not enabled:
        yield
        return
    root = storage.path(workdir)
    if root.exists() and not root.is_dir():
        raise UserError(f'--workdir {workdir} is a file, not a folder; pass a folder.')
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        if storage.is_url(root) and isinstance(e, FileNotFoundError):  # gcsfs: no such bucket
            raise _no_bucket(workdir) from None
        raise UserError(f'--workdir {workdir} cannot be written ({e.strerror or e}); pass a '
                        'folder you can write to.') from None
    holder = f'pid {os.getpid()} on {os.uname().nodename}'
    lock = _lease if storage.is_url(root) else _flock
    with lock(root / '.lock', holder, workdir):
        yield


@contextlib.contextmanager
def _flock(lock_path, holder, workdir):
    try:
        handle = open(lock_path, 'a+')  # noqa: SIM115 (held for the block)
    except OSError as e:
        raise UserError(f'--workdir {workdir} cannot be written ({e.strerror}); pass a folder '
                        'you can write to.') from None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            other = handle.read().strip() or 'another process'
            raise UserError(f'another trainer ({other}) is running in {workdir}; wait for it, '
                            'stop it, or pass another --workdir.') from None
        except OSError as e:  # a file system without locks
            raise UserError(f'--workdir {workdir} cannot be locked ({e.strerror}); use a local '
                            'or lock-capable folder.') from None
        handle.truncate(0)
        handle.write(holder + '\n')
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def _lease(lock_path, holder, workdir):
    import fsspec  # epath has no create-if-absent; fsspec's GCS backend does (ifGenerationMatch=0)
    fs, key = fsspec.core.url_to_fs(os.fspath(lock_path))
    token = f'{holder}, lease {uuid.uuid4().hex}\n'
    if fs.exists(key):
        age = time.time() - fs.modified(key).timestamp()
        if age < LEASE_TTL_S:
            other = fs.cat_file(key).decode(errors='replace').split(',')[0].strip()
            raise UserError(f'another trainer ({other}) renewed its lease on {workdir} {age:.0f} s '
                            f'ago; wait for it, stop it, or pass another --workdir (a lease of a '
                            f'killed trainer expires after {LEASE_TTL_S:.0f} s).')
        fs.rm_file(key)  # its holder stopped renewing it: killed, or its host lost
    try:
        fs.pipe_file(key, token.encode(), mode='create')
    except FileNotFoundError:  # GCS answers an upload "not found" only where the bucket is missing
        raise _no_bucket(workdir) from None
    except (FileExistsError, OSError) as e:
        raise UserError(f'another trainer took the lease on {workdir} at the same moment '
                        f'({type(e).__name__}); pass another --workdir.') from None
    if fs.cat_file(key).decode() != token:  # stores without preconditions: the last writer wins
        raise UserError(f'another trainer took the lease on {workdir} at the same moment; pass '
                        'another --workdir.')
    stop = threading.Event()

    def renew():
        while not stop.wait(LEASE_RENEW_S):
            with contextlib.suppress(Exception):  # a missed renewal is retried; TTL is 5 renewals
                fs.pipe_file(key, token.encode())

    thread = threading.Thread(target=renew, name='workdir-lease', daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        try:
            fs.rm_file(key)
        except FileNotFoundError:
            pass
        except OSError as e:  # the store went away: the lease expires on its own
            print(f'warning: could not remove the lease {lock_path} ({str(e).splitlines()[0]}); '
                  f'it expires {LEASE_TTL_S:.0f} s after its last renewal.', file=sys.stderr)


def _no_bucket(workdir: str) -> UserError:
    url = urllib.parse.urlsplit(workdir)
    return UserError(f'the bucket {url.scheme}://{url.netloc} does not exist; create it, or fix '
                     f'the bucket in --workdir {workdir}.')
