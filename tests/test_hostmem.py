"""The entry points' relaunch with glibc's allocator set to keep step memory (dul_jax/hostmem.py)."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from dul_jax.hostmem import (
    CALLING_THREAD_MIN_BYTES,
    HUGE_PAGES,
    KEEP_FREED,
    OPT_OUT,
    computes_on_cpu,
    huge_pages_help,
    transformer_step_bytes,
)

# The tests below that expect all the tunables (and faults in 2 MB pages) need huge_pages_help().
needs_huge_pages = pytest.mark.skipif(
    not huge_pages_help(), reason="needs glibc >= 2.35 and the kernel's THP mode madvise")

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

# Applies the dispatch setting for a step of STEP_BYTES (unknown if unset), runs a jitted function
# with a 264 MB temporary buffer eight times; prints the dispatch setting and those calls' faults.
JAX_CHILD = '''
import json, os, resource
from dul_jax.hostmem import apply_dispatch_setting, relaunch_with_allocator_settings
relaunch_with_allocator_settings()
apply_dispatch_setting(float(os.environ['STEP_BYTES']) if 'STEP_BYTES' in os.environ else None)
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


@needs_huge_pages
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


@needs_huge_pages
def test_an_xla_step_reuses_its_temporary_memory_and_runs_on_the_calling_thread():
    asynchronous, faults = run_child(JAX_CHILD)
    asynchronous_4k, faults_4k = run_child(JAX_CHILD, **{OPT_OUT: '1'})
    assert (asynchronous, asynchronous_4k) == (False, True)
    assert faults_4k > 8 * 60_000  # 264 MB in 4 KB pages is 67,700 a call
    assert faults < 300  # reused; 8 x 132 two-megabyte pages were it mapped afresh each call
    # a step below glibc's mmap threshold keeps jax's asynchronous dispatch
    assert run_child(JAX_CHILD, STEP_BYTES=str(CALLING_THREAD_MIN_BYTES // 2))[0] is True


def test_the_transformer_estimate_is_near_xlas_temporary_memory():
    from dul_jax import config as config_lib
    from dul_jax.data import DataSpec
    from dul_jax.train.setup import prepare
    cfg = config_lib.load_config('benchmarks/configs/gpt_cpu_target.py', [
        'model.num_layers=2', 'model.embed_dim=64', 'model.mlp_dim=256', 'data.seq_len=128',
        'train.batch_size=8'])
    spec = DataSpec(name='synthetic', kind='text', shape=(128,), num_levels=256, num_classes=0,
                    vocab=None, train_split='train', eval_split='validation', num_train=0,
                    num_eval=0)
    setup = prepare(cfg, devices=jax.devices()[:1], spec=spec)
    state = setup.abstract_state()
    batch = {'tokens': jax.ShapeDtypeStruct((8, 128), jnp.int32)}
    with setup.context():
        compiled = setup.train_step().lower(state, batch).compile()
    xla = compiled.memory_analysis().temp_size_in_bytes
    estimate = transformer_step_bytes(cfg, 128)
    assert xla / 1.5 < estimate < xla * 1.5, (estimate, xla)


@needs_huge_pages
def test_no_relaunch_for_a_program_read_from_stdin():
    environ = {k: v for k, v in os.environ.items() if k != 'GLIBC_TUNABLES'}
    out = subprocess.run([sys.executable, '-'], input=MALLOC_CHILD, env=environ,
                         capture_output=True, text=True, check=True).stdout
    assert json.loads(out)[0] == environ.get('GLIBC_TUNABLES', '')


@needs_huge_pages
def test_relaunch_keeps_other_tunables_and_the_users_values():
    tunables, _, _ = run_child(GLIBC_TUNABLES='glibc.malloc.arena_max=4')
    assert tunables == f'glibc.malloc.arena_max=4:{ALL}'
    tunables, _, _ = run_child(GLIBC_TUNABLES='glibc.malloc.hugetlb=0')
    assert tunables == f'glibc.malloc.hugetlb=0:{":".join(KEEP_FREED)}'


@needs_huge_pages
def test_memory_is_kept_only_where_jax_computes_on_the_cpu(tmp_path, monkeypatch):
    assert run_child(JAX_PLATFORMS='cuda,cpu')[0] == HUGE_PAGES
    assert run_child(JAX_PLATFORMS='cpu')[0] == ALL
    # no JAX_PLATFORMS: an installed accelerator plugin means jax will compute there
    monkeypatch.delenv('JAX_PLATFORMS', raising=False)
    (tmp_path / 'jax_cuda12_plugin').mkdir()
    (tmp_path / 'jax_cuda12_plugin' / '__init__.py').write_text('')
    path = os.pathsep.join([str(tmp_path), os.environ.get('PYTHONPATH', '')])
    assert run_child(PYTHONPATH=path)[0] == HUGE_PAGES
    assert run_child()[0] == (ALL if computes_on_cpu() else HUGE_PAGES)
