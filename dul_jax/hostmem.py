"""glibc malloc on transparent huge pages, so that XLA:CPU steps fault their memory in cheaply.

XLA:CPU allocates a step's temporaries afresh on every call (about 600 MB for the GPT of
benchmarks/configs/gpt_cpu_target.py), from one of its worker threads. glibc serves allocations
that large with fresh mmaps and unmaps them when they are freed, so every step faults its memory
in again, 4 KB at a time and zero-filled by the kernel: on the 2-core CPU of
benchmarks/README.md, 151,000 page faults and ~290 ms of kernel time in a 0.85 s step. glibc's
tunable `glibc.malloc.hugetlb=1` (glibc >= 2.35) asks for transparent huge pages on malloc's
memory: 512 times fewer faults (and TLB misses), and that step 15-20% faster. It matters where
the kernel gives huge pages only to memory that asks (THP mode `madvise`); in mode `always` it
does so anyway, in `never` not at all.

Also tried, not kept: keeping freed memory in one heap (`arena_max=1`, `mmap_max=0`, no trim)
removes the faults altogether, but its single allocator lock made XLA's compiles 1.6x slower
here and 5x slower on a 16-core GPU host, and a scanned 12-layer step 1.6x slower.

glibc reads its tunables once, when a process starts, so the command-line entry points
re-execute themselves once with it set, on any host (on a GPU host it only concerns host-side
memory, and made no difference to the H100 steps of benchmarks/README.md). The setting is in
the environment, so the processes they start inherit it.
"""

import os
import sys

TUNABLE = 'glibc.malloc.hugetlb=1'
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


def _can_restart() -> bool:
    """A script or module run from its file: not an interactive session, a program read from
    stdin, or a process under a tracer (debugger, coverage) whose state a restart would lose."""
    return (bool(sys.executable) and sys.argv[0] not in ('', '-') and not hasattr(sys, 'ps1')
            and not sys.flags.interactive and sys.gettrace() is None)


def relaunch_with_huge_pages() -> None:
    """Re-executes this process, same interpreter and arguments, with TUNABLE added to
    GLIBC_TUNABLES. Returns at once, changing nothing, if this process is such a re-execution
    already, if GLIBC_TUNABLES sets glibc.malloc.hugetlb (a user's own value wins), if
    DUL_JAX_NO_RELAUNCH is set (to anything but 0), if huge pages would not help, or if the
    process cannot be restarted without losing state. Call it first thing in a script's entry
    point, never from library code."""
    present = os.environ.get('GLIBC_TUNABLES', '')
    if (os.environ.get(_MARKER) or 'glibc.malloc.hugetlb=' in present
            or os.environ.get(OPT_OUT, '0') != '0' or not huge_pages_help()
            or not _can_restart()):
        return
    os.environ['GLIBC_TUNABLES'] = f'{present}:{TUNABLE}' if present else TUNABLE
    os.environ[_MARKER] = '1'
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])
    except OSError:  # carry on in this process, with the allocator as it is
        os.environ['GLIBC_TUNABLES'] = present
        del os.environ[_MARKER]
