"""Ends a multi-process run soon after one of its processes dies without notice (a host lost,
a process killed): each process beats in the coordination service's key-value store and
watches the others' beats from a thread, so it notices a silent peer even while its own main
thread waits in a collective that the dead process will never join.

Without it JAX aborts the survivors with a C++ stack trace once its own heartbeat times out;
`distributed.heartbeat_timeout_s` sets ours, and JAX's is set past it (see `jax_heartbeat_s`).
A dead coordinator (process 0) takes the key-value store with it: then JAX's own abort, which
is immediate, is what the others see.
"""

import contextlib
import os
import sys
import threading
import time

import jax

PREFIX = 'dul_jax/alive/'
DONE = 'done'


def jax_heartbeat_s(timeout_s: int) -> int:
    """JAX's own heartbeat timeout: past ours, so that our sentence comes first."""
    return 2 * timeout_s + 10


def _client():
    # jax keeps the distributed client in its private global state; this is its one reader here
    from jax._src import distributed
    return distributed.global_state.client


class Watchdog:
    """Beats every `interval_s` and stops this process, with one sentence from `say`, once another
    process has not beaten for `timeout_s`. A no-op in a single-process run."""

    def __init__(self, timeout_s: float, say, interval_s: float | None = None):
        self.timeout_s, self.say = timeout_s, say
        self.interval_s = interval_s or max(0.5, min(5.0, timeout_s / 5))
        self.me, self.count = jax.process_index(), jax.process_count()
        self._stop = threading.Event()
        self._thread = None

    def __enter__(self):
        if self.count > 1:
            self._thread = threading.Thread(target=self._watch, name='dul_jax-liveness',
                                            daemon=True)
            self._thread.start()
        return self

    def __exit__(self, exc_type, *exc):
        """Stop beating and say so, so that peers still finishing do not count this one lost.
        Left by an exception (a collective or a checkpoint barrier failing as a peer dies), keep
        watching instead: JAX's shutdown barrier at exit would abort this process with a C++
        stack, and the watchdog ends it first, in its one sentence."""
        if self._thread is not None and exc_type is None:
            self._stop.set()
            self._thread.join()
            # the coordinator may already have finished: then nobody is left to tell
            with contextlib.suppress(Exception):
                _client().key_value_set(PREFIX + str(self.me), DONE, allow_overwrite=True)

    def _watch(self) -> None:
        client, beat = _client(), 0
        started = time.monotonic()
        seen = {p: (None, started) for p in range(self.count) if p != self.me}
        while not self._stop.wait(self.interval_s):
            beat += 1
            try:
                client.key_value_set(PREFIX + str(self.me), str(beat), allow_overwrite=True)
                beats = dict(client.key_value_dir_get(PREFIX))
            except Exception as e:  # noqa: BLE001 - any failure here means the store is gone
                self._lost(f'the coordinator (process 0) stopped answering '
                           f'({str(e).strip().splitlines()[0][:200] if str(e).strip() else e!r})')
                return
            now = time.monotonic()
            for process, (value, since) in seen.items():
                current = beats.get(PREFIX + str(process))
                if current == DONE:
                    continue
                if current != value:
                    seen[process] = (current, now)
                elif now - since > self.timeout_s:
                    self._lost(f'process {process} has not been heard from for '
                               f'{now - since:.0f} s')
                    return

    def _lost(self, what: str) -> None:
        if self._stop.is_set():
            return
        self.say(f'{what}: it died or lost its network, so process {self.me} stops too (exit 1); '
                 'rerun the same command on every host to resume from the last complete '
                 'checkpoint.')
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)   # the main thread may be blocked in a collective that cannot finish
