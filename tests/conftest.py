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

import jax
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


# Where a clone has no ../shared/data, the raw files are fetched here once, checksummed.
DATA_CACHE = pathlib.Path(os.environ.get('XDG_CACHE_HOME') or pathlib.Path.home() / '.cache') \
    / 'dul_jax' / 'test_data'


def raw_data_folder(shared: pathlib.Path, cache: pathlib.Path) -> tuple[str | None, str]:
    """(a folder holding every raw file of the local data sets, '') or (None, why not).

    `shared` where it exists (the project machines' ../shared/data), or $DUL_JAX_DATA_DIR where it
    holds them all; else `cache`, after fetching what it lacks through the project's own download
    route (sha256-checked; $DUL_JAX_DATA_URL picks a mirror of the same layout)."""
    if shared.is_dir():
        return str(shared), ''
    from dul_jax.data import catalog, download
    from dul_jax.errors import UserError
    given = os.environ.get('DUL_JAX_DATA_DIR')
    if given and all((pathlib.Path(given) / raw.path).is_file()
                     for files in download.RAW_FILES.values() for raw in files):
        return given, ''
    advice = ('set DUL_JAX_DATA_DIR to a folder holding them (layout: docs/data.md) or '
              'DUL_JAX_DATA_URL to a mirror of that layout, and rerun')
    try:
        base = download.base_url('')
        if not base and not catalog.internet_reachable():
            return None, f'the raw data files are not here and there is no internet; {advice}'
        for name in download.RAW_FILES:
            download.ensure_files(name, cache, base)
    except UserError as e:
        return None, f'the raw data files are not here and could not be fetched ({e}); {advice}'
    return str(cache), ''


@pytest.fixture(scope='session')
def _raw_data():
    folder, why = raw_data_folder(SHARED_DATA, DATA_CACHE)
    if folder is not None:
        os.environ.setdefault('DUL_JAX_DATA_DIR', folder)
    return folder, why


@pytest.fixture
def shared_data(_raw_data):
    """The raw data files: ../shared/data on the project machines, else fetched once into
    DATA_CACHE through the download route; a skip saying how to provide them where neither works."""
    folder, why = _raw_data
    if folder is None:
        pytest.skip(why)
    return folder


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


@contextlib.contextmanager
def quick_compiles():
    """XLA without most optimizations (about half the compile time of a tiny model's init or step,
    the same values up to rounding), with the trainer's CPU peak-FLOP/s fixed at 1e11: measuring
    it runs a 2048^3 matmul that takes ~10 s optimized and crawls unoptimized, and only the logged
    MFU uses it. For a module: `with quick_compiles(): yield` in an autouse fixture."""

    from dul_jax.train import mfu
    before = jax.config.read('jax_disable_most_optimizations')
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(mfu, 'peak_flops_per_device', lambda: (1e11, 'fixed by the tests'))
        jax.config.update('jax_disable_most_optimizations', True)
        try:
            yield
        finally:
            jax.config.update('jax_disable_most_optimizations', before)


def perturbed_params(task, batch, scale=0.2, seed=0):
    """`task`'s params at init (key 0, one jitted init) plus N(0, scale^2) noise drawn by numpy,
    as host arrays: random everywhere, the layers a family initialises to zero included, so every
    output and every gradient is non-trivial. `batch`: what task.init takes (a dummy batch)."""
    import flax.linen as nn
    import numpy as np
    params = jax.device_get(jax.jit(lambda key: nn.meta.unbox(task.init(key, batch)))(
        jax.random.key(0)))
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda p: (p + scale * rng.normal(size=p.shape)).astype(p.dtype), params)


def loss_and_grads(setup, params, batch, rng, step=0):
    """(the task's training loss, its gradients) at host `params` on a host `batch`, both placed
    as a run on setup's mesh places them, in one jit: what two meshes must agree on. Host
    arrays."""
    import jax.numpy as jnp

    from dul_jax.tasks.base import StepContext
    task = setup.task
    with setup.context():
        placed = jax.device_put(params, setup.state_shardings.params)
        fn = jax.jit(jax.value_and_grad(
            lambda p, b: task.loss(p, b, rng, StepContext(jnp.int32(step))).loss))
        return jax.device_get(fn(placed, setup.put_batch(batch)))


def assert_same_loss_and_grads(got, want, rtol=1e-5, grad_rtol=1e-4, err_msg=''):
    """`got` and `want` from loss_and_grads agree: the losses to rtol, the gradients to
    grad_rtol of their global norm; the reference's gradients are finite and not all zero."""
    import numpy as np
    import optax
    (value, grads), (value_ref, grads_ref) = got, want
    norm = float(optax.global_norm(grads_ref))
    assert np.isfinite(float(value_ref)) and np.isfinite(norm) and norm > 0, err_msg
    np.testing.assert_allclose(value, value_ref, rtol=rtol, err_msg=err_msg)
    assert jax.tree.structure(grads) == jax.tree.structure(grads_ref), err_msg
    difference = float(optax.global_norm(jax.tree.map(lambda a, b: a - b, grads, grads_ref)))
    assert difference <= grad_rtol * norm, f'{err_msg}: |grad diff| {difference} vs |grad| {norm}'
