"""glibc malloc settings under which XLA:CPU's training steps reuse their memory.

XLA:CPU allocates a step's temporaries afresh on every call, as one block (500 MB for the GPT of
benchmarks/configs/gpt_cpu_target.py, 1.5 GB for its 12-layer version). glibc serves a block
that large with a fresh mmap and unmaps it when it is freed, so every step faulted its memory in
again, zero-filled by the kernel: in 4 KB pages, 151,000 faults and ~290 ms of kernel time in a
0.85 s step on the 2-core CPU of benchmarks/README.md. Two fixes, both glibc tunables:

- `glibc.malloc.hugetlb=1` (glibc >= 2.35) puts malloc's memory on transparent huge pages: 512
  times fewer faults and TLB misses. It matters where the kernel gives huge pages only to memory
  that asks (THP mode `madvise`); in mode `always` it does so anyway, in `never` not at all.
- `glibc.malloc.mmap_max=0` with trimming off keeps freed memory in the heap, so the next step
  gets the same, already-mapped pages: no faults, no zero-filling (the remaining ~70-130 ms of
  kernel time per step). Only the main thread's heap can hold a block this large (another
  thread's arena falls back to mmap), so single-device computations must run on the thread that
  calls them: `jax_cpu_enable_async_dispatch` off, which `apply_dispatch_setting` sets wherever
  these tunables are in force. The process keeps its peak memory until it exits, as a training
  process would anyway.

Also tried, not kept: all threads on one heap (`arena_max=1`): no faults either, but its single
lock made XLA's compiles 1.6x (here) to 5x (16-core host) slower.

glibc reads its tunables once, when a process starts, so the command-line entry points
re-execute themselves once with them set, on any host (on a GPU host they only concern host
memory; the huge pages made no difference to the H100 steps of benchmarks/README.md). They are in
the environment, so the processes those start inherit them.
"""

import os
import sys

HUGE_PAGES = 'glibc.malloc.hugetlb=1'
KEEP_FREED = ('glibc.malloc.mmap_max=0', f'glibc.malloc.trim_threshold={1 << 40}')
OPT_OUT = 'DUL_JAX_NO_RELAUNCH'
_MARKER = 'DUL_JAX_RELAUNCHED'
_THP_SETTING = '/sys/kernel/mm/transparent_hugepage/enabled'


def _glibc_version() -> tuple[int, ...]:
    try:
        name, version = os.confstr('CS_GNU_LIBC_VERSION').split()  # e.g. 'glibc 2.36'
    except (AttributeError, ValueError, OSError):
        return ()
    return tuple(int(part) for part in version.split('.')[:2]) if name == 'glibc' else ()


def huge_pages_help() -> bool:
    """glibc >= 2.35 (the tunable's first release) and the kernel's THP mode `madvise`."""
    if _glibc_version() < (2, 35):
        return False
    try:
        with open(_THP_SETTING) as f:
            return '[madvise]' in f.read()
    except OSError:
        return False


def wanted_tunables() -> list[str]:
    """The settings that help on this host: KEEP_FREED on glibc >= 2.26 (its tunables' first
    release), HUGE_PAGES where huge_pages_help()."""
    wanted = list(KEEP_FREED) if _glibc_version() >= (2, 26) else []
    return wanted + [HUGE_PAGES] if huge_pages_help() else wanted


def _tunable_names(tunables: str) -> set[str]:
    return {item.split('=')[0] for item in tunables.split(':') if item}


def _can_restart() -> bool:
    """A script or module run from its file: not an interactive session, a program read from
    stdin, or a process under a tracer (debugger, coverage) whose state a restart would lose."""
    return (bool(sys.executable) and sys.argv[0] not in ('', '-') and not hasattr(sys, 'ps1')
            and not sys.flags.interactive and sys.gettrace() is None)


def relaunch_with_allocator_settings() -> None:
    """Re-executes this process, same interpreter and arguments, with wanted_tunables() added to
    GLIBC_TUNABLES (a tunable that GLIBC_TUNABLES sets already keeps the user's value), then
    applies apply_dispatch_setting(). Re-executes nothing if this process is such a
    re-execution already, if DUL_JAX_NO_RELAUNCH is set (to anything but 0), if nothing is
    missing, or if the process cannot be restarted without losing state. Call it first thing in
    a script's entry point, before jax starts a backend, never from library code."""
    present = os.environ.get('GLIBC_TUNABLES', '')
    missing = [t for t in wanted_tunables() if t.split('=')[0] not in _tunable_names(present)]
    if (missing and not os.environ.get(_MARKER) and os.environ.get(OPT_OUT, '0') == '0'
            and _can_restart()):
        os.environ['GLIBC_TUNABLES'] = ':'.join(filter(None, [present, *missing]))
        os.environ[_MARKER] = '1'
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])
        except OSError:  # carry on in this process, with the allocator as it is
            os.environ['GLIBC_TUNABLES'] = present
            del os.environ[_MARKER]
    apply_dispatch_setting()


def keeps_freed_memory() -> bool:
    """Whether this process started with KEEP_FREED's mmap_max=0 (tunables are read at start)."""
    return KEEP_FREED[0] in os.environ.get('GLIBC_TUNABLES', '').split(':')


def apply_dispatch_setting() -> None:
    """Runs single-device computations on the calling thread, whose heap keeps a step's memory,
    where keeps_freed_memory(). Must precede the CPU backend's start, which reads the setting."""
    if keeps_freed_memory():
        import jax
        jax.config.update('jax_cpu_enable_async_dispatch', False)
