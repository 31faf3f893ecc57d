"""Test-wide setup: 8 simulated CPU devices (set before jax is imported), shared fixtures, and
helpers the test files import (`from conftest import ...`)."""

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

import contextlib
import pathlib
import socket
import subprocess
import sys
import time

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


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on: bound, then released."""
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def start_cli(*args: str, **env: str) -> subprocess.Popen:
    """`dul-jax ARGS` in a new process in the repository root, with `env` added to this process's
    environment; its stdout and stderr are piped, as text."""
    return subprocess.Popen([sys.executable, '-m', 'dul_jax.cli', *args], cwd=REPO,
                            env={**os.environ, **env}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@contextlib.contextmanager
def gcs_emulator(bucket: str):
    """gs://`bucket` on the GCS emulator (tests/gcs_emulator.py) at 127.0.0.1; yields the
    environment that points gcsfs, orbax's tensorstore, array_record and google-auth at it."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(REPO / 'tests' / 'gcs_emulator.py'), str(port),
                             bucket], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 30
        while True:
            try:
                socket.create_connection(('127.0.0.1', port), timeout=1).close()
                break
            except OSError:
                assert time.time() < deadline and proc.poll() is None, \
                    'the GCS emulator did not start'
                time.sleep(0.1)
        url = f'http://127.0.0.1:{port}'
        yield {'STORAGE_EMULATOR_HOST': url, 'TENSORSTORE_GCS_HTTP_URL': url,
               'CLOUD_STORAGE_EMULATOR_ENDPOINT': url,   # array_record's reader (TFDS data sets)
               'GOOGLE_AUTH_TOKEN_FOR_TESTING': 'emulator'}
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def train_losses(setup, state, batches):
    """(the state after one train step on each of `batches`, the losses of those steps)."""
    step = setup.train_step()
    losses = []
    with setup.context():
        for batch in batches:
            state, metrics = step(state, setup.put_batch(batch))
            losses.append(float(metrics['loss']))
    return state, losses


def save_trained_run(workdir, cfg, setup, batches, steps):
    """A run's workdir as `dul-jax train` leaves it (config.json, a checkpoint at `steps`), after
    `steps` train steps from seed 0 on what the iterator `batches` yields."""
    from dul_jax import config as config_lib
    from dul_jax.train.checkpoint import Checkpointer
    with setup.context():
        state = setup.init_state(0)
        step = setup.train_step()
        for _ in range(steps):
            state, _ = step(state, setup.put_batch(next(batches)))
    with open(os.path.join(workdir, 'config.json'), 'w') as f:
        f.write(config_lib.to_json(cfg))
    ckpt = Checkpointer(os.path.join(workdir, 'checkpoints'), async_save=False)
    ckpt.save(steps, state, force=True)
    ckpt.close()
