"""Faults at the edges: bit rot in a checkpoint, a checkpoint write that fails in the background,
a stop signal during the final eval, a second trainer, a platform the host lacks, a file where a
folder must be, and the CLI's one sentence for each."""

import errno
import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import free_port, save_trained_run, start_cli
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from orbax.checkpoint._src.checkpointers import async_checkpointer
from test_train import DEMO, read_metrics, tiny_overrides

from dul_jax import cli
from dul_jax import config as config_lib
from dul_jax.errors import UserError, WorldFailed, from_os_error
from dul_jax.train import loop, workdir_lock, writers
from dul_jax.train.checkpoint import Checkpointer, digest
from dul_jax.train.setup import prepare


def _tree(seed=0):
    rng = np.random.default_rng(seed)
    return {'w': jnp.asarray(rng.standard_normal((64, 32)), jnp.float32),
            'h': jnp.asarray(rng.standard_normal((16,)), jnp.bfloat16),
            'n': jnp.asarray(rng.integers(0, 2**31, (8,)), jnp.int32),
            'u': jnp.asarray(rng.integers(0, 2**32, (4096,), dtype=np.uint32)),  # incompressible
            'key': jax.random.key_data(jax.random.key(seed)), 'step': jnp.asarray(7, jnp.int32)}


def test_the_digest_is_the_same_on_any_mesh_and_sees_one_flipped_bit_or_swapped_elements():
    tree = _tree()
    mesh = jax.make_mesh((8,), ('data',))
    sharded = dict(tree, w=jax.device_put(tree['w'], NamedSharding(mesh, P('data', None))))
    assert digest(sharded) == digest(tree)
    assert set(digest(tree)) == {"['w']", "['h']", "['n']", "['u']", "['key']",
                                "['step']"}
    bits = np.asarray(tree['w']).view(np.uint32).copy()
    bits[37, 5] ^= 1 << 13
    flipped = dict(tree, w=jnp.asarray(bits.view(np.float32)))
    assert digest(flipped)["['w']"] != digest(tree)["['w']"]
    assert {k: v for k, v in digest(flipped).items() if k != "['w']"} == \
        {k: v for k, v in digest(tree).items() if k != "['w']"}
    typed = jax.random.key(3)   # a typed key is checked by its bits
    assert digest({'k': typed}) == digest({'k': jax.random.key_data(typed)})
    swapped = dict(tree, n=tree['n'][::-1])
    assert digest(swapped)["['n']"] != digest(tree)["['n']"]


def test_replica_parallel_saving_is_each_checkpointers_choice_and_old_checkpoints_load(tmp_path):
    import orbax.checkpoint as ocp
    mesh = jax.make_mesh((8,), ('data',))
    tree = jax.device_put(_tree(), NamedSharding(mesh, P()))     # replicated on 8 devices
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding),
                            tree)
    handler = ocp.type_handlers.get_type_handler(jax.Array)
    for parallel in (False, True):
        directory = str(tmp_path / f'parallel_{parallel}')
        ckpt = Checkpointer(directory, async_save=False, replica_parallel=parallel)
        ckpt.save(1, tree)
        ckpt.close()
        restored = Checkpointer(directory).restore(abstract)
        jax.tree.map(np.testing.assert_array_equal, restored, tree)
    # orbax's process-wide registry is left as it was
    assert ocp.type_handlers.get_type_handler(jax.Array) is handler
    # a checkpoint written the way this project did before (orbax's StandardSave) still loads
    old = str(tmp_path / 'standard_save')
    with ocp.CheckpointManager(old) as manager:
        manager.save(3, args=ocp.args.Composite(state=ocp.args.StandardSave(tree)))
    ckpt = Checkpointer(old)
    jax.tree.map(np.testing.assert_array_equal, ckpt.restore(abstract), tree)
    assert ckpt.restored_step == 3


def _flip_a_bit_of(directory, array: np.ndarray):
    """Flip one bit of `array`'s bytes where they lie in the checkpoint's data files: bit rot
    that leaves every file readable."""
    needle = array.tobytes()[512:544]
    for root, _, files in os.walk(directory):
        for name in files:
            path = os.path.join(root, name)
            with open(path, 'rb') as f:
                data = f.read()
            at = data.find(needle)
            if at >= 0:
                with open(path, 'r+b') as f:
                    f.seek(at + 5)
                    f.write(bytes([data[at + 5] ^ 0x10]))
                return
    raise AssertionError(f'the array bytes are not stored verbatim under {directory}')


def test_a_flipped_bit_that_reads_fine_is_caught_by_the_checksum(tmp_path, capsys):
    directory = tmp_path / 'checkpoints'
    ckpt = Checkpointer(directory, async_save=False)
    ckpt.save(1, _tree(1))
    ckpt.save(2, _tree(2))
    ckpt.close()
    _flip_a_bit_of(directory / '2', np.asarray(_tree(2)['u']))
    ckpt = Checkpointer(directory, async_save=False)
    restored = ckpt.restore(jax.eval_shape(lambda: _tree(0)))
    ckpt.close()
    assert ckpt.restored_step == 1
    np.testing.assert_array_equal(restored['u'], _tree(1)['u'])
    err = capsys.readouterr().err
    assert "1 array(s), first ['u'], differ from the checksum recorded when it was saved" in err
    assert os.listdir(str(directory) + '_corrupt') == ['2']


def _failing_commits(monkeypatch, fail_from: int):
    """Make every background checkpoint commit from the `fail_from`-th on fail as a full disk."""
    real = async_checkpointer._background_wait_for_commit_futures
    calls = []

    def commit(*args, **kwargs):
        calls.append(1)
        if len(calls) >= fail_from:
            for written in args[1]:   # the writes end, and then the disk is found full
                written.result()
            raise OSError(errno.ENOSPC, 'No space left on device')
        return real(*args, **kwargs)
    monkeypatch.setattr(async_checkpointer, '_background_wait_for_commit_futures', commit)


def test_a_failed_background_save_names_the_last_good_checkpoint(tmp_path, monkeypatch):
    directory = tmp_path / 'checkpoints'
    _failing_commits(monkeypatch, fail_from=2)
    ckpt = Checkpointer(directory)
    ckpt.save(1, _tree(1))   # no wait: the next save learns how this one ended
    ckpt.save(2, _tree(2))
    with pytest.raises(WorldFailed, match=r'saving checkpoint 2 in .* failed \(.*No space left'
                                          r'.*\); training stopped at step 3, and the last good '
                                          r'checkpoint is step 1: free space there'):
        ckpt.wait(3)
    ckpt.close()
    assert ckpt.all_steps() == [1]


@pytest.mark.integration
def test_training_stops_at_a_failed_save_and_a_stop_during_the_final_eval_keeps_the_run(
        tmp_path, tfds_dir, monkeypatch, capsys):
    # a save that fails in the background stops training before the next one, naming step 4
    workdir = str(tmp_path / 'full')
    cfg = config_lib.load_config(DEMO, tiny_overrides(tfds_dir, **{
        'train.steps': 12, 'train.ckpt_every': 4}))
    _failing_commits(monkeypatch, fail_from=2)
    with pytest.raises(WorldFailed, match=r'saving checkpoint 8 .* training stopped at step '
                                          r'(8|9|1[0-2]), and the last good checkpoint is step 4'):
        loop.train(cfg, workdir)
    monkeypatch.undo()
    # the half-written step 8 is removed when the checkpoints are next opened (the rerun)
    ckpts = os.path.join(workdir, 'checkpoints')
    assert sorted(os.listdir(ckpts)) == ['4', '8.orbax-checkpoint-tmp']
    reopened = Checkpointer(ckpts, async_save=False)   # removed before its first save
    reopened.save(9, _tree())
    reopened.close()
    assert sorted(os.listdir(ckpts)) == ['4', '9']

    # the store gone while logging (gcsfs's connector error from the metrics upload): one
    # sentence with the step and the last checkpoint on disk
    workdir = str(tmp_path / 'unreachable')
    refused, real_write = _refused(), writers.MetricWriter.write

    def write(self, step, metrics):
        if step >= 10:
            raise refused
        real_write(self, step, metrics)
    monkeypatch.setattr(writers.MetricWriter, 'write', write)
    cfg = config_lib.load_config(DEMO, tiny_overrides(tfds_dir, **{
        'train.steps': 12, 'train.ckpt_every': 4, 'train.log_every': 2}))
    with pytest.raises(WorldFailed, match=r'^training stopped at step 10, and the last good '
                                          r'checkpoint is step (4|8) in .*: the storage could '
                                          r'not be reached \(Cannot connect to host'):
        loop.train(cfg, workdir)
    monkeypatch.undo()

    # SIGTERM during the final eval: the last step is saved, the eval stops at once, the run
    # returns {}; the same command again evaluates and samples that checkpoint
    workdir = str(tmp_path / 'stopped')
    cfg = config_lib.load_config(DEMO, tiny_overrides(tfds_dir, **{'train.steps': 4}))
    real = loop.evaluate_all

    def evaluate_then_stopped(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)
    monkeypatch.setattr(loop, 'evaluate_all', evaluate_then_stopped)
    assert loop.train(cfg, workdir) == {}
    assert 'SIGTERM: stopped the final eval and sampling; checkpoint 4 is saved' in \
        capsys.readouterr().out
    assert not any('eval/loss' in r for r in read_metrics(workdir))
    monkeypatch.setattr(loop, 'evaluate_all', real)
    final = loop.train(cfg, workdir)
    assert set(final) >= {'loss', 'bits_per_dim'}
    assert [r['step'] for r in read_metrics(workdir) if 'eval/loss' in r] == [4]


def _refused() -> OSError:
    """A real aiohttp connector error, what gcsfs raises once the store is gone."""
    import asyncio

    import aiohttp

    async def connect():
        async with aiohttp.ClientSession() as session:
            await session.get(f'http://127.0.0.1:{free_port()}/')
    try:
        asyncio.run(connect())
    except aiohttp.ClientConnectorError as e:
        return e
    raise AssertionError('a closed port accepted a connection')


def test_a_store_that_cannot_be_reached_is_the_world_failing():
    error = _refused()
    known = from_os_error(error)
    assert isinstance(known, WorldFailed)
    assert str(known).startswith('the storage could not be reached (Cannot connect to host '
                                 '127.0.0.1:')
    assert str(known).endswith('rerun the same command once it is back.')


def test_staged_files_the_store_cannot_take_at_the_end_are_kept_and_named(tmp_path, capsys,
                                                                          monkeypatch):
    monkeypatch.setattr(writers.storage, 'is_url', lambda path: True)   # stage, as for gs://
    (tmp_path / 'gone').write_text('')        # the "store": a path no folder can be made under
    remote = str(tmp_path / 'gone' / 'run')
    writer = writers.MetricWriter(remote, names=())
    writer.start()
    writer.write(1, {'loss': 2.5})
    log = writers.HostLog(remote)
    log.write('step 1 done')
    writer.close()
    log.close()
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and all(line.startswith(f'warning: could not upload to {remote}')
                                 for line in err)
    kept = [line.rsplit('kept in ', 1)[1].rstrip('.') for line in err]
    with open(os.path.join(kept[0], 'metrics.jsonl')) as f:
        assert f.read() == '{"step": 1, "loss": 2.5}\n'
    with open(os.path.join(kept[1], 'process_0.log')) as f:
        assert f.read().endswith(' step 1 done\n')


def test_library_tracebacks_become_one_line_in_the_cli(monkeypatch):
    import logging
    logger = logging.getLogger('gcsfs')
    monkeypatch.setattr(logger, 'filters', [])
    monkeypatch.delenv('DUL_JAX_TRACEBACKS', raising=False)
    cli.one_line_library_errors()
    records = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(logging.Formatter().format(record))
    logger.addHandler(handler)
    try:
        try:
            raise _refused()
        except OSError:
            logger.exception('_request out of retries on exception')
    finally:
        logger.removeHandler(handler)
    assert records == ['_request out of retries on exception']


def test_a_second_trainer_is_told_before_its_model_is_built(tmp_path, monkeypatch):
    workdir = str(tmp_path / 'run')

    def build(*args, **kwargs):
        raise AssertionError('the model was built before the lock was checked')
    monkeypatch.setattr(loop, 'prepare', build)
    cfg = config_lib.load_config(DEMO, ['train.steps=1'])
    with workdir_lock.exclusive(workdir, enabled=True), pytest.raises(UserError, match='another'):
        loop.train(cfg, workdir)


def test_the_cli_says_one_sentence_for_a_missing_module_and_a_failing_disk(tmp_path, capsys,
                                                                          monkeypatch):
    config = tmp_path / 'needs.py'
    config.write_text(f'import wandb_not_here\nexec(open({DEMO!r}).read())\n')
    assert cli.main(['train', '--config', str(config), '--workdir', str(tmp_path / 'r')]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f'error: config file {config} imports wandb_not_here, which is not '
                          'installed') and err.count('\n') == 1
    # an OSError the command did not expect: permissions are the user's (2), a full disk the
    # world's (1); one sentence naming the file either way
    for number, code in ((errno.EACCES, 2), (errno.ENOSPC, 1)):
        def run(argv, number=number):
            raise OSError(number, os.strerror(number), '/data/out.npz')
        monkeypatch.setattr(cli, 'run', run)
        assert cli.main(['export']) == code
        err = capsys.readouterr().err
        assert err.startswith('error: /data/out.npz ') and err.count('\n') == 1
    monkeypatch.setattr(cli, 'run', lambda argv: (_ for _ in ()).throw(OSError(errno.EBADF, 'x')))
    with pytest.raises(OSError):
        cli.main(['export'])


def _said(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith('error:')]


@pytest.mark.integration
def test_a_platform_the_host_lacks_is_one_sentence_naming_jax_platforms(tmp_path):
    from jax._src import hardware_utils
    if hardware_utils.num_available_tpu_chips_and_device_id()[0]:
        pytest.skip('this host has a TPU')
    # libtpu is installed, finds no chip in about 3 s, and JAX's backend cannot start
    proc = start_cli('train', '--config', 'demo', '--workdir', str(tmp_path / 'run'),
                     '--config.train.steps=1', JAX_PLATFORMS='tpu')
    _, err = proc.communicate(timeout=60)
    said = _said(err)
    assert proc.returncode == 2 and len(said) == 1 and 'Traceback' not in err, err[-3000:]
    assert said[0].startswith("error: JAX could not start the platform asked for (Unable to "
                              "initialize backend 'tpu'"), said
    assert said[0].endswith('unset JAX_PLATFORMS or install and attach that accelerator.'), said
    assert not (tmp_path / 'run').exists()


def test_data_prepared_below_a_file_is_one_sentence_naming_the_folder(tmp_path, capsys):
    (tmp_path / 'a_file').write_text('')    # root ignores permission bits, not ENOTDIR
    folder = tmp_path / 'a_file' / 'tfds'
    assert cli.main(['data', 'prepare', 'digits', '--dir', str(folder)]) == 2
    err = capsys.readouterr().err
    assert _said(err) == [(f'error: {folder} cannot be written or read (Not a directory); pass '
                           'a path you can write to, or change its permissions.')]
    assert 'Traceback' not in err


@pytest.mark.integration
def test_an_export_below_a_file_is_one_sentence_naming_it(tmp_path, tfds_dir, capsys):
    workdir = str(tmp_path / 'run')
    os.mkdir(workdir)
    cfg = config_lib.load_config(DEMO, tiny_overrides(tfds_dir))
    save_trained_run(workdir, cfg, prepare(cfg), iter(()), steps=0)
    in_the_way = tmp_path / 'a_file'
    in_the_way.write_text('')
    # the checkpoint loads, then the output's folder cannot be made: a file stands there
    assert cli.main(['export', '--workdir', workdir, '--output',
                     str(in_the_way / 'run.msgpack')]) == 2
    err = capsys.readouterr().err
    assert _said(err) == [(f'error: {in_the_way} cannot be written or read (File exists); pass '
                           'a path you can write to, or change its permissions.')]
    assert 'Traceback' not in err and in_the_way.read_text() == ''
