"""glibc malloc on transparent huge pages, so that XLA:CPU steps fault their memory in cheaply.

XLA:CPU allocates a step's temporaries afresh on every call (about 600 MB for the GPT of
benchmarks/configs/gpt_cpu_target.py), from one of its worker threads. glibc serves allocations
that large with fresh mmaps and unmaps them when they are freed, so every step faults its memory
in again, 4 KB at a time and zero-filled by the kernel: on the 2-core CPU of
benchmarks/README.md, 151,000 page faults and ~290 ms of kernel time in a 0.85 s step. glibc's
tunable `glibc.malloc.hugetlb=1` asks for transparent huge pages on malloc's memory: 512 times
fewer faults (and TLB misses), and that step 15-20% faster.

Also tried, not kept: keeping freed memory in one heap (`arena_max=1`, `mmap_max=0`, no trim)
removes the faults altogether, but its single allocator lock made XLA's compiles 1.6x slower
here and 5x slower on a 16-core GPU host, and a scanned 12-layer GPT step 1.6x slower.

glibc reads its tunables once, when a process starts, so the command-line entry points
re-execute themselves once with it set.
"""

import os
import platform
import sys

TUNABLE = 'glibc.malloc.hugetlb=1'
OPT_OUT = 'DUL_JAX_NO_RELAUNCH'
_THP_SETTING = '/sys/kernel/mm/transparent_hugepage/enabled'


def huge_pages_available() -> bool:
    """glibc, and a kernel that gives transparent huge pages to mappings that ask for them."""
    if platform.libc_ver()[0] != 'glibc':
        return False
    try:
        with open(_THP_SETTING) as f:
            setting = f.read()
    except OSError:
        return False
    return '[always]' in setting or '[madvise]' in setting


def relaunch_with_huge_pages() -> None:
    """Re-executes this process, same interpreter and arguments, with TUNABLE added to
    GLIBC_TUNABLES; returns at once if GLIBC_TUNABLES sets glibc.malloc.hugetlb already (a
    user's own value wins), where huge pages are not available, or if the environment sets
    DUL_JAX_NO_RELAUNCH. Call it first thing in a script's entry point (it replaces the
    process), never from library code."""
    present = os.environ.get('GLIBC_TUNABLES', '')
    if 'glibc.malloc.hugetlb=' in present or os.environ.get(OPT_OUT) or \
            not huge_pages_available():
        return
    os.environ['GLIBC_TUNABLES'] = f'{present}:{TUNABLE}' if present else TUNABLE
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])
