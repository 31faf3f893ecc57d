"""The entry points' relaunch with glibc's allocator on transparent huge pages (dul_jax/hostmem.py)."""

import json
import os
import subprocess
import sys

import pytest

from dul_jax.hostmem import OPT_OUT, huge_pages_help

pytestmark = pytest.mark.skipif(not huge_pages_help(),
                                reason="needs glibc >= 2.35 and the kernel's THP mode madvise")

# Allocates, touches and frees 256 MB eight times through glibc (numpy madvises on its own), then prints the tunables and the page faults.
CHILD = '''
import ctypes, json, os, resource, sys
from dul_jax.hostmem import relaunch_with_huge_pages
relaunch_with_huge_pages()
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


def run_child(**env):
    environ = {k: v for k, v in os.environ.items()
               if k not in ('GLIBC_TUNABLES', OPT_OUT, 'DUL_JAX_RELAUNCHED')}

    out = subprocess.run([sys.executable, '-c', CHILD, 'a', '--b=1'], env={**environ, **env},
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def test_relaunch_sets_the_tunable_keeps_arguments_and_cuts_page_faults():
    tunables, faults, args = run_child()
    assert 'glibc.malloc.hugetlb=1' in tunables
    assert args == ['a', '--b=1']
    opted_out, faults_4k, _ = run_child(**{OPT_OUT: '1'})
    assert opted_out == ''
    assert run_child(**{OPT_OUT: '0'})[0] == 'glibc.malloc.hugetlb=1'
    # 8 x 256 MB in 4 KB pages is 524,288 faults; in 2 MB pages, about a thousand
    assert faults_4k > 400_000
    assert faults < faults_4k / 20


def test_no_relaunch_for_a_program_read_from_stdin():
    environ = {k: v for k, v in os.environ.items() if k != 'GLIBC_TUNABLES'}
    out = subprocess.run([sys.executable, '-'], input=CHILD, env=environ, capture_output=True,
                         text=True, check=True).stdout
    assert json.loads(out)[0] == environ.get('GLIBC_TUNABLES', '')


def test_relaunch_keeps_other_tunables():
    tunables, _, _ = run_child(GLIBC_TUNABLES='glibc.malloc.arena_max=4')
    assert tunables == 'glibc.malloc.arena_max=4:glibc.malloc.hugetlb=1'
    assert run_child(GLIBC_TUNABLES='glibc.malloc.hugetlb=0')[0] == 'glibc.malloc.hugetlb=0'
