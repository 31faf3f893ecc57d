"""Test-wide setup: 8 simulated CPU devices (set before jax is imported), and shared fixtures."""

import os

os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_force_host_platform_device_count=8').strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
# Deviceless TPU compiles in several test workers at once: no TPU is attached to lock.
os.environ.setdefault('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')
# One persistent compilation cache for the session and its subprocesses: tests that build the
# same tiny model in several runs (train, resume, eval, sample) compile it once.
_CACHE = os.path.join(os.environ.get('TMPDIR', '/tmp'), f'dul_jax_test_jit_cache_{os.getpid()}')
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', _CACHE)
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '0')

import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / 'shared' / 'data'
# Configs leave data.dir empty: the raw corpora come from $DUL_JAX_DATA_DIR (here, where present).
if SHARED_DATA.is_dir():
    os.environ.setdefault('DUL_JAX_DATA_DIR', str(SHARED_DATA))


@pytest.fixture(scope='session')
def tfds_dir(tmp_path_factory):
    """One prepared-data cache for the whole session, so each data set is built once."""
    return str(tmp_path_factory.mktemp('tfds'))


@pytest.fixture
def shared_data():
    """../shared/data, or skip: a user's fresh clone has no shared folder beside it."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f'{SHARED_DATA} is absent (only the project machines have it)')
    return str(SHARED_DATA)
