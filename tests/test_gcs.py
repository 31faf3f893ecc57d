"""Workdirs on Google Cloud Storage, against a GCS emulator started on 127.0.0.1
(gcp-storage-emulator, with the behaviours of GCS it lacks added in tests/gcs_emulator.py): train,
Ctrl-C save, bit-identical resume, eval, sample, TensorBoard, the lease lock, a two-run sweep,
a bucket that does not exist, and one deleted mid-run."""

import errno
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

import flax.serialization
import jax
import numpy as np
import pytest
from conftest import gcs_emulator, start_cli
from etils import epath

import dul_jax
from dul_jax import cli, data
from dul_jax import config as config_lib
from dul_jax.data import catalog
from dul_jax.errors import UserError
from dul_jax.scaling import sweep
from dul_jax.train import checkpoint, loop, workdir_lock
from dul_jax.train import run as run_lib
from dul_jax.train.checkpoint import restore_state
from dul_jax.train.setup import prepare
from dul_jax.train.writers import MetricWriter

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(REPO, 'experiments', 'configs', 'demo.py')
BUCKET = 'dul-jax-test'
pytestmark = pytest.mark.integration


@pytest.fixture(scope='module')
def bucket():
    """gs://BUCKET on an emulator; gcsfs, orbax's tensorstore and google-auth are pointed at it."""
    with gcs_emulator(BUCKET) as env:
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            yield f'gs://{BUCKET}'
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


def tiny(tfds_dir, **extra):
    items = {'data.tfds_dir': tfds_dir, 'model.num_layers': 1, 'model.num_heads': 2,
             'model.embed_dim': 32, 'model.mlp_dim': 64, 'model.dropout': 0.0,
             'train.batch_size': 16, 'train.log_every': 2, 'train.eval_every': 0,
             'train.ckpt_every': 0, 'eval.batch_size': 64, 'eval.max_examples': 128,
             'sample.num': 4, 'optim.schedule': 'constant', 'optim.ema_decay': 0.9}
    items.update(extra)
    return config_lib.load_config(DEMO, [f'{k}={v}' for k, v in items.items()])


def params_of(workdir, cfg):
    setup = prepare(cfg)
    state = restore_state(epath.Path(workdir) / 'checkpoints', setup.abstract_state())
    return jax.device_get(state.params), int(state.step)


def test_train_interrupt_resume_eval_sample_on_gcs(bucket, tfds_dir, tmp_path, monkeypatch,
                                                   capsys):
    run = f'{bucket}/runs/interrupted'
    first_step = loop._Run._time_first_step

    def then_ctrl_c(self, state):
        first_step(self, state)
        signal.raise_signal(signal.SIGINT)
    monkeypatch.setattr(loop._Run, '_time_first_step', then_ctrl_c)
    assert loop.train(tiny(tfds_dir, **{'train.steps': 50}), run) == {}
    monkeypatch.undo()
    assert 'SIGINT: saved a checkpoint at step 1' in capsys.readouterr().out
    root = epath.Path(run)
    assert not (root / '.lock').exists()          # the lease is given back on exit
    assert not os.path.exists('gs:')               # nothing written to a local folder "gs:"

    cfg = tiny(tfds_dir, **{'train.steps': 6})
    loop.train(cfg, run)
    assert 'resumed from gs://' in capsys.readouterr().out
    straight = str(tmp_path / 'straight')
    loop.train(cfg, straight)
    (a, step_a), (b, step_b) = params_of(run, cfg), params_of(straight, cfg)
    assert step_a == step_b == 6
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)

    rows = [json.loads(line) for line in (root / 'metrics.jsonl').read_text().splitlines()]
    assert [r['step'] for r in rows if 'loss' in r] == [1, 2, 4, 6]   # step 1 logged at Ctrl-C
    history = list((root / 'config_history').iterdir())
    assert [p.name for p in history] == ['config_until_step_000001.json']  # train.steps changed
    events = list((root / 'tensorboard').iterdir())
    assert events and all(p.stat().length > 0 for p in events)
    assert (root / 'samples' / 'step_000006.png').is_file()

    saved = loop.load_config_of(run)
    metrics = loop.eval_command(saved, run)
    on_gcs = json.loads((root / 'eval_step_000006.json').read_text())
    assert on_gcs['loss'] == pytest.approx(metrics['loss'])
    paths = loop.sample_command(saved, run, num=3, seed=1)
    assert paths == [f'{run}/samples/step_000006.png'] and epath.Path(paths[0]).stat().length > 0
    # the run opens from the bucket: its kept data spec, its EMA params, an export written there
    kept = data.DataSpec.from_json((root / 'data_spec.json').read_text())
    assert kept == data.describe(saved.data)
    opened = dul_jax.load_run(run)
    assert opened.step == 6 and opened.spec == kept
    run_lib.export(saved, run, f'{run}/params.msgpack')
    exported = flax.serialization.msgpack_restore((root / 'params.msgpack').read_bytes())
    for x, y in zip(jax.tree.leaves(exported['params']), jax.tree.leaves(opened.params),
                    strict=True):
        np.testing.assert_array_equal(x, y)
    # a checkpoint's bytes are checked in the bucket before orbax reads them: a cut-off copy
    state = root / 'checkpoints' / '6' / 'state'
    assert (state / 'manifest.ocdbt').exists() and checkpoint._unreadable(state) is None
    for blob in (state / 'd').iterdir():
        blob.write_bytes(b'')
    assert 'Error reading Byte range' in checkpoint._unreadable(state)


READ_BACK = """
import hashlib, sys
from dul_jax import config, data
cfg = config.load_config(sys.argv[1], ['data.tfds_dir=' + sys.argv[2]]).data
batch = next(data.eval_batches(cfg, 64, max_examples=64))
print(data.describe(cfg).num_train, hashlib.sha256(batch['image'].tobytes()).hexdigest())
"""


def test_a_tfds_dir_in_the_bucket_is_prepared_once_then_read_from_there(bucket, tmp_path,
                                                                       monkeypatch):
    # TFDS (without TensorFlow) writes array_record files to local folders only: the data set is
    # made in the local staging folder, uploaded, and read from the bucket from then on
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(catalog, 'DEFAULT_TFDS_DIR', str(tmp_path / 'staging'))
    tfds_dir = f'{bucket}/tfds'
    cfg = tiny(tfds_dir).data
    spec = data.describe(cfg)
    remote = epath.Path(tfds_dir) / 'dul_digits' / '1.0.0'
    names = {p.name for p in remote.iterdir()}
    assert 'dataset_info.json' in names and any('train.array_record' in n for n in names)
    assert (tmp_path / 'staging' / 'dul_digits').is_dir() and not os.path.exists('gs:')
    batch = next(data.eval_batches(cfg, 64, max_examples=64))
    # another process with an empty home reads the bucket's copy and prepares nothing locally
    home = tmp_path / 'home'
    home.mkdir()
    out = subprocess.run([sys.executable, '-c', READ_BACK, DEMO, tfds_dir], check=True,
                         capture_output=True, text=True, cwd=home,
                         env={**os.environ, 'HOME': str(home)}).stdout.split()
    assert out == [str(spec.num_train), hashlib.sha256(batch['image'].tobytes()).hexdigest()]
    assert list(home.iterdir()) == []


def test_lease_refuses_a_second_trainer_and_expires(bucket, monkeypatch, capsys):
    run = f'{bucket}/runs/locked'
    with workdir_lock.exclusive(run):
        holder = (epath.Path(run) / '.lock').read_text()
        assert f'pid {os.getpid()}' in holder
        with pytest.raises(UserError, match='another trainer .* renewed its lease'), \
                workdir_lock.exclusive(run):
            pass
    assert not (epath.Path(run) / '.lock').exists()
    # a lease its killed holder no longer renews is taken over
    (epath.Path(run) / '.lock').write_text('pid 1 on elsewhere, lease 0\n')
    monkeypatch.setattr(workdir_lock, 'LEASE_TTL_S', 0.0)
    with workdir_lock.exclusive(run):
        assert f'pid {os.getpid()}' in (epath.Path(run) / '.lock').read_text()
    # the store gone when the run ends: the lease is left to expire, with one warning
    import fsspec
    fs = fsspec.core.url_to_fs(run)[0]   # the cached instance the lease uses

    def refused(path, **kwargs):
        raise ConnectionRefusedError(errno.ECONNREFUSED, 'Connect call failed')
    monkeypatch.setattr(fs, 'rm_file', refused)
    with workdir_lock.exclusive(run):
        pass
    assert capsys.readouterr().err == (f'warning: could not remove the lease {run}/.lock '
                                       '([Errno 111] Connect call failed); it expires 0 s after '
                                       'its last renewal.\n')


SWEEP = '''
from dul_jax import config as config_lib
from dul_jax.scaling.sweep import SweepRun


def get_sweep():
    base = config_lib.load_config({demo!r})
    base.data.tfds_dir = {tfds_dir!r}
    # the shapes of the run above, and runs differing by seed: compiled programs are reused
    base.model.update(num_layers=1, num_heads=2, embed_dim=32, mlp_dim=64, dropout=0.0)
    base.train.update(steps=2, batch_size=16, log_every=2, eval_every=0, ckpt_every=0)
    base.optim.update(schedule='constant', ema_decay=0.9)
    base.eval.update(batch_size=64, max_examples=128)
    base.sample.num = 4
    return base, [SweepRun('seed0', {{'seed': 0}}), SweepRun('seed1', {{'seed': 1}})]
'''


def test_two_run_sweep_on_gcs(bucket, tfds_dir, tmp_path):
    path = tmp_path / 'sweep.py'
    path.write_text(SWEEP.format(demo=DEMO, tfds_dir=tfds_dir))
    workdir = f'{bucket}/sweep'
    results = sweep.run_sweep(str(path), workdir)
    assert [r['name'] for r in results] == ['seed0', 'seed1']
    table = (epath.Path(workdir) / 'results.jsonl').read_text().splitlines()
    assert [json.loads(line)['name'] for line in table] == ['seed0', 'seed1']
    assert (epath.Path(workdir) / 'runs' / 'seed1' / 'checkpoints' / '2').is_dir()
    # finished runs are skipped when the sweep is run again
    again = sweep.run_sweep(str(path), workdir)
    assert [r['wall_s'] for r in again] == [r['wall_s'] for r in results]


def test_a_config_file_in_the_bucket_is_read_from_there(bucket, capsys):
    path = f'{bucket}/configs/short_demo.py'
    (epath.Path(path)).write_text(
        'from dul_jax import config as config_lib\n\n\n'
        'def get_config():\n'
        "    c = config_lib.load_config('demo')\n"
        '    c.train.steps = 7\n'
        '    return c\n')
    cfg = config_lib.load_config(path, ['optim.lr=0.01'])
    demo = config_lib.load_config('demo')
    assert (cfg.train.steps, cfg.optim.lr, cfg.task) == (7, 0.01, demo.task)
    assert cli.main(['config', 'show', '--config', path]) == 0
    assert json.loads(capsys.readouterr().out)['train']['steps'] == 7
    with pytest.raises(UserError, match=f'config file {bucket}/configs/nope.py does not exist'):
        config_lib.load_config(f'{bucket}/configs/nope.py')


def test_compress_reads_and_writes_gcs_files(bucket):
    from dul_jax.compress.format import _read, _write_atomically
    path = f'{bucket}/coded/out.dulz'
    _write_atomically(path, b'DULZ' + bytes(range(256)))
    assert _read(path) == b'DULZ' + bytes(range(256))
    with pytest.raises(UserError, match='does not exist'):
        _read(f'{bucket}/coded/missing.npy')


def test_the_cli_against_an_emulator_says_one_line_without_credential_warnings(bucket, tmp_path):
    proc = subprocess.run([sys.executable, '-m', 'dul_jax.cli', 'eval', '--workdir',
                           f'{bucket}/no_run'], capture_output=True, text=True, cwd=tmp_path,
                          timeout=120, check=False)
    assert proc.returncode == 2
    said = (f'error: {bucket}/no_run has no config.json; pass the --workdir of a run started '
            'with `dul-jax train`.')
    assert proc.stderr.splitlines() == [said]


def test_a_workdir_in_a_bucket_that_does_not_exist_is_refused_in_one_sentence(bucket, capsys,
                                                                              monkeypatch):
    said = ('error: the bucket gs://no-such-bucket does not exist; create it, or fix the bucket '
            'in --workdir gs://no-such-bucket/run.')
    # the command as users run it (its gcsfs finds the bucket missing at the lease's upload) ...
    start = time.monotonic()
    proc = subprocess.run([sys.executable, '-m', 'dul_jax.cli', 'train', '--config', DEMO,
                           '--workdir', 'gs://no-such-bucket/run'], capture_output=True,
                          text=True, cwd=REPO, timeout=120, check=False)
    took = time.monotonic() - start
    assert proc.returncode == 2 and proc.stderr.splitlines()[-1:] == [said], proc.stderr[-3000:]
    assert 'Traceback' not in proc.stderr and took < 60, took  # refused before a model is built
    # ... and in-process, where gcsfs's bucket-type lookup finds it missing at the mkdir
    def build(*args, **kwargs):
        raise AssertionError('the model was built before the bucket was checked')
    monkeypatch.setattr(loop, 'prepare', build)
    assert cli.main(['train', '--config', DEMO, '--workdir', 'gs://no-such-bucket/run']) == 2
    assert capsys.readouterr().err.splitlines()[-1:] == [said]


def test_metrics_uploaded_to_a_bucket_deleted_since_are_kept_locally_and_named(bucket, capsys):
    import fsspec
    fs = fsspec.core.url_to_fs(bucket)[0]
    fs.mkdir('short-lived')
    writer = MetricWriter('gs://short-lived/run', names=())
    writer.start()
    writer.write(1, {'loss': 0.5})
    writer.sync(force=True)
    assert json.loads(epath.Path('gs://short-lived/run/metrics.jsonl').read_text())['loss'] == 0.5
    fs.rm('short-lived', recursive=True)   # the bucket and its copy gone; nothing changed since
    assert not fs.exists('short-lived')
    writer.close()
    kept = os.path.join(writer.local, 'metrics.jsonl')
    try:
        assert json.loads(epath.Path(kept).read_text())['loss'] == 0.5
        err = capsys.readouterr().err
        assert re.fullmatch(r'warning: could not upload to gs://short-lived/run \(.*\); the files '
                            rf'are kept in {re.escape(writer.local)}\.\n', err), err
    finally:
        shutil.rmtree(writer.local, ignore_errors=True)
    # where the store takes the final upload, the staged copy is deleted
    writer = MetricWriter(f'{bucket}/runs/metrics_only', names=())
    writer.start()
    writer.write(1, {'loss': 0.25})
    writer.sync(force=True)
    writer.close()
    assert not os.path.exists(writer.local)
    remote = epath.Path(f'{bucket}/runs/metrics_only/metrics.jsonl').read_text()
    assert json.loads(remote)['loss'] == 0.25


def _stored(url: str) -> bool:
    """Whether the emulator holds the object at `url` (its JSON API's metadata GET)."""
    try:
        with urllib.request.urlopen(url, timeout=5):
            return True
    except urllib.error.HTTPError as e:
        if e.code == 404:
            return False
        raise


def test_a_bucket_deleted_mid_run_stops_training_at_the_next_save_in_one_sentence(tfds_dir):
    # an emulator of its own, as its bucket is deleted (the other tests keep the module's); the
    # deletion answers every later write "not found", which no client retries, so the trainer
    # must see it at once: exit status 1 and one sentence, no traceback, within a save or two
    every = 4
    overrides = {'data.tfds_dir': tfds_dir, 'model.num_layers': 1, 'model.num_heads': 2,
                 'model.embed_dim': 32, 'model.mlp_dim': 64, 'model.dropout': 0.0,
                 'train.batch_size': 16, 'train.eval_every': 0, 'train.steps': 10**6,
                 'train.ckpt_every': every, 'optim.schedule': 'constant',
                 # nothing logged before it fails: the first logged MFU measures the CPU's peak
                 # (a 2048^3 matmul, 10-20 s), and the first write after the deletion is then
                 # the next checkpoint's
                 'train.log_every': 10**6}
    with gcs_emulator('vanishing') as env:
        url = env['STORAGE_EMULATOR_HOST']
        proc = start_cli('train', '--config', DEMO, '--workdir', 'gs://vanishing/run',
                         *(f'--config.{k}={v}' for k, v in overrides.items()),
                         DUL_JAX_TRACEBACKS='0', **env)
        try:
            # the first checkpoint is committed: on GCS orbax writes this marker last
            marker = urllib.parse.quote(f'run/checkpoints/{every}/commit_success.txt', safe='')
            deadline = time.monotonic() + 120
            while not _stored(f'{url}/storage/v1/b/vanishing/o/{marker}'):
                assert proc.poll() is None, proc.communicate()[1][-3000:]
                assert time.monotonic() < deadline, 'no checkpoint was committed in 120 s'
                time.sleep(0.05)
            # the bucket and everything in it deleted at once (the emulator's own reset: through
            # the JSON API the objects must go first, and the trainer keeps writing new ones)
            urllib.request.urlopen(f'{url}/wipe', timeout=10).read()
            deleted = time.monotonic()
            _, err = proc.communicate(timeout=60)
            took = time.monotonic() - deleted
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    lines = err.splitlines()
    said = [line for line in lines if line.startswith('error:')]
    assert proc.returncode == 1 and 'Traceback' not in err and said == lines[-1:], err[-3000:]
    found = re.fullmatch(r'error: saving checkpoint (\d+) in gs://vanishing/run/checkpoints '
                         r'failed \((.*)\); training stopped at step (\d+), and the last good '
                         r'checkpoint is step (\d+): check that it still exists \(a deleted '
                         r'bucket takes its checkpoints with it\), recreate it if not, and rerun '
                         r'the same command to resume from what is there\.', said[0])
    assert found, said[0]
    failed, cause, stopped, last = int(found[1]), found[2], int(found[3]), int(found[4])
    assert re.search(r'NOT_FOUND|FileNotFoundError', cause), cause
    # the save after the last good one failed, and training stopped before the one after it
    assert last >= every and failed == last + every and failed <= stopped <= failed + every
    assert took < 20, took   # not minutes of retries, as for a store that cannot be reached
    # what the trainer held only locally (its log, staged metrics) is kept there and named
    kept = re.findall(r'^warning: could not upload to gs://vanishing/run\S* \(.*\); the files '
                      r'are kept in (\S+)\.$', err, re.MULTILINE)
    try:
        assert any(os.path.isfile(os.path.join(k, 'process_0.log')) for k in kept), err[-3000:]
        # the metrics too, though uploaded at the last good save and unchanged since: the
        # deleted bucket took that copy with it
        assert any(os.path.isfile(os.path.join(k, 'metrics.jsonl')) for k in kept), err[-3000:]
    finally:
        for folder in kept:
            shutil.rmtree(folder, ignore_errors=True)
