"""The entry points' relaunch with glibc's allocator set to keep step memory (dul_jax/hostmem.py)."""

import json
import os
import subprocess
import sys

import pytest

from dul_jax.hostmem import HUGE_PAGES, KEEP_FREED, OPT_OUT, huge_pages_help

pytestmark = pytest.mark.skipif(not huge_pages_help(),
                                reason="needs glibc >= 2.35 and the kernel's THP mode madvise")

ALL = ':'.join([*KEEP_FREED, HUGE_PAGES])

# Allocates, touches and frees 256 MB eight times through glibc (numpy madvises on its own), then
# prints the tunables, the page faults and its arguments.
MALLOC_CHILD = '''
import ctypes, json, os, resource, sys
from dul_jax.hostmem import relaunch_with_allocator_settings
relaunch_with_allocator_settings()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(8):
    block = libc.malloc(256 << 20)
    ctypes.memset(block, 1, 256 << 20)
    libc.free(block)
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps([os.environ.get('GLIBC_TUNABLES', ''), faults, sys.argv[1:]]))
'''

# Runs a jitted function with a 264 MB temporary buffer eight times; prints the dispatch setting
# and the page faults of those calls.
JAX_CHILD = '''
import json, resource
from dul_jax.hostmem import relaunch_with_allocator_settings
relaunch_with_allocator_settings()
import jax, jax.numpy as jnp
step = jax.jit(lambda x: jnp.cumsum(jnp.sin(x) * 2.0)[::-1].cumsum()[-1])
x = jnp.ones((1 << 25,), jnp.float32)
step(x).block_until_ready()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(8):
    step(x).block_until_ready()
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps([jax.config.values['jax_cpu_enable_async_dispatch'], faults]))
'''


def run_child(child=MALLOC_CHILD, **env):
    environ = {k: v for k, v in os.environ.items()
               if k not in ('GLIBC_TUNABLES', OPT_OUT, 'DUL_JAX_RELAUNCHED')}
    out = subprocess.run([sys.executable, '-c', child, 'a', '--b=1'], env={**environ, **env},
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out.splitlines()[-1])


def test_relaunch_sets_the_tunables_keeps_arguments_and_reuses_memory():
    tunables, faults, args = run_child()
    assert tunables == ALL
    assert args == ['a', '--b=1']
    opted_out, faults_4k, _ = run_child(**{OPT_OUT: '1'})
    assert opted_out == ''
    assert run_child(**{OPT_OUT: '0'})[0] == ALL
    # the user's own mmap_max wins: each block mapped afresh, but in 2 MB pages
    _, faults_huge, _ = run_child(GLIBC_TUNABLES='glibc.malloc.mmap_max=65536')
    # 8 x 256 MB in 4 KB pages is 524,288 faults; in 2 MB pages 1,024; reused, 128 (one touch)
    assert faults_4k > 400_000
    assert faults_huge < faults_4k / 20
    assert faults < faults_huge / 4


def test_an_xla_step_reuses_its_temporary_memory_and_runs_on_the_calling_thread():
    asynchronous, faults = run_child(JAX_CHILD)
    asynchronous_4k, faults_4k = run_child(JAX_CHILD, **{OPT_OUT: '1'})
    assert (asynchronous, asynchronous_4k) == (False, True)
    assert faults_4k > 8 * 60_000  # 264 MB in 4 KB pages is 67,700 a call
    assert faults < 1_000


def test_no_relaunch_for_a_program_read_from_stdin():
    environ = {k: v for k, v in os.environ.items() if k != 'GLIBC_TUNABLES'}
    out = subprocess.run([sys.executable, '-'], input=MALLOC_CHILD, env=environ,
                         capture_output=True, text=True, check=True).stdout
    assert json.loads(out)[0] == environ.get('GLIBC_TUNABLES', '')


def test_relaunch_keeps_other_tunables_and_the_users_values():
    tunables, _, _ = run_child(GLIBC_TUNABLES='glibc.malloc.arena_max=4')
    assert tunables == f'glibc.malloc.arena_max=4:{ALL}'
    tunables, _, _ = run_child(GLIBC_TUNABLES='glibc.malloc.hugetlb=0')
    assert tunables == f'glibc.malloc.hugetlb=0:{":".join(KEEP_FREED)}'
