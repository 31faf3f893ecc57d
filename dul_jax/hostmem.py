"""Transparent huge pages for the host memory of XLA:CPU steps.

XLA:CPU allocates a step's temporaries afresh on every call (about 600 MB for the GPT of
benchmarks/configs/gpt_cpu_target.py). glibc serves allocations that large with fresh mmaps and
returns them when they are freed, so every step faults its memory in again, 4 KB at a time: on
the 2-core CPU of benchmarks/README.md, 151,000 page faults and ~290 ms of kernel time in a
0.85 s step. glibc's tunable `glibc.malloc.hugetlb=1` asks for transparent huge pages on those
mappings: ~700 faults, ~70 ms, and the step 15-20% faster. glibc reads its tunables once, when a
process starts, so the command-line entry points re-execute themselves once with it set.
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
    GLIBC_TUNABLES; returns at once if it is set already, where huge pages are not available, or
    if the environment sets DUL_JAX_NO_RELAUNCH. Call it first thing in a script's entry point
    (it replaces the process), never from library code."""
    tunables = os.environ.get('GLIBC_TUNABLES', '')
    if 'glibc.malloc.hugetlb' in tunables or os.environ.get(OPT_OUT) or \
            not huge_pages_available():
        return
    os.environ['GLIBC_TUNABLES'] = f'{tunables}:{TUNABLE}' if tunables else TUNABLE
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])
