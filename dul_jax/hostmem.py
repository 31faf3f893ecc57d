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
  kernel time per step). Every process under these settings keeps its main heap's peak. Only the main thread's heap can hold a block this large (another
  thread's arena falls back to mmap), so single-device computations must run on the thread that
  calls them: `jax_cpu_enable_async_dispatch` off, which `dul-jax train` and the step benchmarks
  set (`set_dispatch_for`) where these tunables are in force and a step's temporaries are large;
  eval, sample, sweep and the coders keep jax's asynchronous dispatch. The process keeps its peak memory until it exits, as a training
  process would anyway.

Also tried, not kept: all threads on one heap (`arena_max=1`): no faults either, but its single
lock made XLA's compiles 1.6x (here) to 5x (16-core host) slower.

glibc reads its tunables once, when a process starts, so the command-line entry points
re-execute themselves once with them set: the huge pages on any host (on a GPU host they only
concern host memory, and made no difference to the H100 steps of benchmarks/README.md), the
rest where jax computes on the CPU. They are in the environment, so the processes those start
inherit them.
"""

import math
import os
import pkgutil
import sys

HUGE_PAGES = 'glibc.malloc.hugetlb=1'
KEEP_FREED = ('glibc.malloc.mmap_max=0', f'glibc.malloc.trim_threshold={1 << 40}')
OPT_OUT = 'DUL_JAX_NO_RELAUNCH'
_MARKER = 'DUL_JAX_RELAUNCHED'
_THP_SETTING = '/sys/kernel/mm/transparent_hugepage/enabled'
# Steps with fewer temporary bytes keep jax's asynchronous dispatch: measured, they gained nothing
# from the calling thread (a worker thread's heap, up to 64 MB, keeps most of their memory) and
# lost the overlap of Python with the step (benchmarks/README.md).
CALLING_THREAD_MIN_BYTES = 32 << 20


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


def computes_on_cpu() -> bool:
    """Whether jax will compute on the CPU, judged without importing it: JAX_PLATFORMS names the
    CPU first, or it is unset and no accelerator plugin (jax_cuda*, jax_rocm*, libtpu) is
    installed."""
    platforms = os.environ.get('JAX_PLATFORMS', '').strip()
    if platforms:
        return platforms.split(',')[0].strip() == 'cpu'
    return not any(module.name.startswith(('jax_cuda', 'jax_rocm', 'libtpu'))
                   for module in pkgutil.iter_modules())


def wanted_tunables() -> list[str]:
    """The settings that help on this host: KEEP_FREED where computes_on_cpu() on glibc >= 2.26
    (its tunables' first release; an accelerator's steps do not live in host memory, and these
    settings are unmeasured there), HUGE_PAGES where huge_pages_help()."""
    wanted = list(KEEP_FREED) if _glibc_version() >= (2, 26) and computes_on_cpu() else []
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
    GLIBC_TUNABLES (a tunable that GLIBC_TUNABLES sets already keeps the user's value).
    Re-executes nothing if this process is such a re-execution already, if DUL_JAX_NO_RELAUNCH is set (to anything but 0), if nothing is
    missing, or if the process cannot be restarted without losing state. Call it first thing in
    a script's entry point, before jax starts a backend, never from library code."""
    if os.environ.get(_MARKER) or os.environ.get(OPT_OUT, '0') != '0' or not _can_restart():
        return
    present = os.environ.get('GLIBC_TUNABLES', '')
    missing = [t for t in wanted_tunables() if t.split('=')[0] not in _tunable_names(present)]
    if missing:
        os.environ['GLIBC_TUNABLES'] = ':'.join(filter(None, [present, *missing]))
        os.environ[_MARKER] = '1'
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])
        except OSError:  # carry on in this process, with the allocator as it is
            os.environ['GLIBC_TUNABLES'] = present
            del os.environ[_MARKER]


def keeps_freed_memory() -> bool:
    """Whether this process started with KEEP_FREED's mmap_max=0 (tunables are read at start)."""
    return KEEP_FREED[0] in os.environ.get('GLIBC_TUNABLES', '').split(':')


def transformer_step_bytes(cfg, tokens: int) -> float | None:
    """A rough size of the float32 temporaries of a Transformer's train step on `tokens` tokens
    per example: per token and layer, the activations kept for the backward pass (~12 d + 2 mlp
    values) and the attention weights (~2 heads x tokens values). None for a config without
    those model keys. XLA's figure for benchmarks/configs/gpt_cpu_target.py: 500 MB; this: 470."""
    m = cfg.model
    if not all(key in m for key in ('embed_dim', 'mlp_dim', 'num_layers', 'num_heads')):
        return None
    per_token = 12 * m.embed_dim + 2 * m.mlp_dim + 2 * m.num_heads * tokens
    return 4.0 * cfg.train.batch_size * tokens * m.num_layers * per_token


def apply_dispatch_setting(step_bytes: float | None) -> None:
    """Runs single-device computations on the calling thread, whose heap keeps a step's memory,
    where keeps_freed_memory() and the step's temporaries (`step_bytes`, None if unknown) exceed
    CALLING_THREAD_MIN_BYTES; smaller steps keep jax's default, dispatching from a worker thread
    while Python prepares the next step, which is faster for them (a 1-layer 16-wide GPT: 25%
    more tokens/s; a 4 x 96 one: 20% fewer). jax reads the setting when its CPU backend starts,
    so after that this only warns."""
    if keeps_freed_memory() and (step_bytes is None or step_bytes > CALLING_THREAD_MIN_BYTES):
        import warnings

        import jax
        try:  # private, so checked only while it exists
            from jax._src.xla_bridge import backends_are_initialized
        except ImportError:
            backends_are_initialized = bool
        if backends_are_initialized():
            warnings.warn('jax has started its backends already, so CPU computations stay on '
                          'its worker threads; call apply_dispatch_setting before any jax call.')
            return
        jax.config.update('jax_cpu_enable_async_dispatch', False)


def set_dispatch_for(cfg, describe_data) -> None:
    """apply_dispatch_setting() for the train step of cfg, where keeps_freed_memory(): the
    Transformer estimate for the autoregressive task, on `describe_data()`'s example shape (a
    DataSpec; called only then), and unknown (so the calling thread) for the other tasks, whose
    configs here all have large steps."""
    if not keeps_freed_memory():
        return
    step_bytes = None
    if cfg.task == 'autoregressive':
        step_bytes = transformer_step_bytes(cfg, math.prod(describe_data().shape))
    apply_dispatch_setting(step_bytes)
