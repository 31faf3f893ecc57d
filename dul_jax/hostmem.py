"""glibc malloc settings that stop XLA:CPU steps from faulting their memory in on every call.

XLA:CPU allocates a step's temporaries afresh on every call (about 600 MB for the GPT of
benchmarks/configs/gpt_cpu_target.py), from one of its worker threads. glibc serves allocations
that large with fresh mmaps and unmaps them when they are freed, so every step faults its memory
in again, 4 KB at a time and zero-filled by the kernel: on the 2-core CPU of
benchmarks/README.md, 151,000 page faults and ~290 ms of kernel time in a 0.85 s step. So:
- `hugetlb=1`: transparent huge pages for malloc's memory, 512 times fewer faults (and TLB
  misses); alone it took the step 15-20% faster, still zero-filling ~1.3 GB a step;
- `arena_max=1`, `mmap_max=0`, `trim_threshold=...`: every thread allocates from the main heap,
  which grows once and is never given back, so a step reuses the last step's pages: no faults
  at all, a further ~5%, at the price of one allocator lock shared by all threads. Only where
  the steps run on the CPU: on a 16-core GPU host that lock made XLA's multi-threaded
  compilation of GPT-125M 5x slower (10.7 s -> 52 s) for a step that the host barely touches.
glibc reads its tunables once, when a process starts, so the command-line entry points
re-execute themselves once with them set.
"""

import glob
import os
import platform
import sys

HUGE_PAGES = ('glibc.malloc.hugetlb=1',)
ONE_KEPT_HEAP = ('glibc.malloc.arena_max=1', 'glibc.malloc.mmap_max=0',
                 'glibc.malloc.trim_threshold=68719476736')
_ACCELERATOR_NODES = ('/dev/nvidia[0-9]*', '/dev/accel[0-9]*', '/dev/vfio/[0-9]*')
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


def steps_run_on_cpu() -> bool:
    """JAX_PLATFORMS names the CPU first, or, unset, no GPU or TPU device node exists."""
    platforms = os.environ.get('JAX_PLATFORMS', '')
    if platforms:
        return platforms.split(',')[0] == 'cpu'
    return not any(glob.glob(pattern) for pattern in _ACCELERATOR_NODES)


def tunables() -> tuple[str, ...]:
    return HUGE_PAGES + (ONE_KEPT_HEAP if steps_run_on_cpu() else ())


def relaunch_with_huge_pages() -> None:
    """Re-executes this process, same interpreter and arguments, with those of `tunables()` that
    GLIBC_TUNABLES does not name yet (a user's own setting wins); returns at once if it names
    them all, where huge pages are not available, or if the environment sets DUL_JAX_NO_RELAUNCH.
    Call it first thing in a script's entry point (it replaces the process), never from library
    code."""
    present = os.environ.get('GLIBC_TUNABLES', '')
    missing = [t for t in tunables() if t.split('=')[0] + '=' not in present]
    if not missing or os.environ.get(OPT_OUT) or not huge_pages_available():
        return
    os.environ['GLIBC_TUNABLES'] = ':'.join(([present] if present else []) + missing)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])
