"""The trainer end to end on real data (scikit-learn digits): learning, resume, SIGTERM, NaN
stop."""

import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import chex
import jax
import numpy as np
import pytest
from conftest import start_cli

from dul_jax import config as config_lib
from dul_jax import data as data_lib
from dul_jax.errors import UserError
from dul_jax.sharding.inspect import bytes_per_device
from dul_jax.tasks.base import StepContext
from dul_jax.train import loop, workdir_lock
from dul_jax.train.checkpoint import Checkpointer, restore_position, restore_state
from dul_jax.train.setup import prepare
from dul_jax.train.state import accumulated_grads
from dul_jax.train.writers import MetricWriter

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(REPO, 'experiments', 'configs', 'demo.py')


def tiny_overrides(tfds_dir, **extra):
    """A 1-layer, 32-wide iGPT on digits: a few ms per step, so the tests stay quick."""
    items = {'data.tfds_dir': tfds_dir, 'model.num_layers': 1, 'model.num_heads': 2,
             'model.embed_dim': 32, 'model.mlp_dim': 64, 'model.dropout': 0.0,
             'train.batch_size': 16, 'train.log_every': 5, 'train.eval_every': 0,
             'train.ckpt_every': 0, 'eval.batch_size': 64, 'eval.max_examples': 128,
             'sample.num': 4, 'optim.warmup_steps': 5, 'optim.ema_decay': 0.0}
    items.update(extra)
    return [f'{k}={v}' for k, v in items.items()]


def read_metrics(workdir):
    with open(os.path.join(workdir, 'metrics.jsonl')) as f:
        return [json.loads(line) for line in f]


def final_params(workdir, overrides):
    cfg = config_lib.load_config(DEMO, overrides)
    setup = prepare(cfg)
    state = restore_state(os.path.join(workdir, 'checkpoints'), setup.abstract_state())
    return jax.device_get(state.params), int(state.step)


@pytest.mark.integration
def test_loss_falls_and_run_writes_everything(tmp_path, tfds_dir):
    workdir = str(tmp_path / 'run')
    cfg = config_lib.load_config(DEMO, tiny_overrides(tfds_dir, **{'train.steps': 80,
                                                                     'optim.lr': 3e-3}))
    final = loop.train(cfg, workdir)
    rows = [r for r in read_metrics(workdir) if 'loss' in r]
    assert rows[0]['step'] == 5 and rows[-1]['step'] == 80
    # uniform over 17 levels costs ln 17 = 2.83 nats; digits are mostly background, so a model
    # that learns anything is far below that
    assert rows[-1]['loss'] < 0.7 * rows[0]['loss']
    assert final['loss'] < 1.75
    for key in ('lr', 'grad_norm', 'tokens_per_s', 'examples_per_s', 'mfu'):
        assert key in rows[-1]
    assert 0 < rows[-1]['mfu'] < 1
    # 80 steps of 16 digits of 64 pixels
    assert rows[-1]['examples_seen'] == 80 * 16 and rows[-1]['tokens_seen'] == 80 * 16 * 64
    assert os.path.isfile(os.path.join(workdir, 'config.json'))
    assert os.listdir(os.path.join(workdir, 'tensorboard'))
    assert os.path.isfile(os.path.join(workdir, 'samples', 'step_000080.png'))
    # eval on the whole split agrees with the final eval of the loop on the same examples
    cfg.eval.max_examples = 0
    metrics = loop.eval_command(cfg, workdir)
    assert abs(metrics['bits_per_dim'] - metrics['loss'] / np.log(2)) < 1e-5


def _cli(args):
    return start_cli(*args, PYTHONUNBUFFERED='1')


@pytest.mark.integration
def test_sigterm_then_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path, tfds_dir):
    # Constant LR, so a run's schedule does not depend on train.steps: the interrupted run can be
    # resumed to any length and compared with an uninterrupted run of that length.
    base = tiny_overrides(tfds_dir, **{'optim.schedule': 'constant', 'optim.ema_decay': 0.9})
    interrupted = str(tmp_path / 'interrupted')
    proc = _cli(['train', '--config', DEMO, '--workdir', interrupted, '--config.train.steps=100000',
                 *('--config.' + o for o in base)])
    deadline = time.time() + 240
    while time.time() < deadline:
        path = os.path.join(interrupted, 'metrics.jsonl')
        if os.path.exists(path) and any('loss' in r for r in read_metrics(interrupted)):
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert 'SIGTERM: saved a checkpoint' in out
    _, stopped_at = final_params(interrupted, base)
    assert 5 <= stopped_at < 100000
    total = stopped_at + 7
    resumed = _cli(['train', '--config', DEMO, '--workdir', interrupted,
                    f'--config.train.steps={total}', *('--config.' + o for o in base)])
    out, err = resumed.communicate(timeout=240)
    assert resumed.returncode == 0, err
    assert 'resumed from' in out

    straight = str(tmp_path / 'straight')
    cfg = config_lib.load_config(DEMO, base + [f'train.steps={total}'])
    loop.train(cfg, straight)
    a, step_a = final_params(interrupted, base)
    b, step_b = final_params(straight, base)
    assert step_a == step_b == total
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(x, y)


@pytest.mark.integration
def test_ctrl_c_saves_a_checkpoint_and_returns(tmp_path, tfds_dir, monkeypatch, capsys):
    # Ctrl-C arrives right after the first step: that step finishes and is saved
    first_step = loop._Run._time_first_step

    def then_ctrl_c(self, state):
        first_step(self, state)
        signal.raise_signal(signal.SIGINT)
    monkeypatch.setattr(loop._Run, '_time_first_step', then_ctrl_c)
    workdir = str(tmp_path / 'interrupted')
    cfg = config_lib.load_config(DEMO, tiny_overrides(tfds_dir, **{'train.steps': 50}))
    before = signal.getsignal(signal.SIGINT)   # SIG_IGN in a job started in the background
    assert loop.train(cfg, workdir) == {}
    assert 'SIGINT: saved a checkpoint at step 1' in capsys.readouterr().out
    assert os.listdir(os.path.join(workdir, 'checkpoints')) == ['1']
    assert signal.getsignal(signal.SIGINT) is before  # handler given back


@pytest.mark.integration
def test_resume_keeps_the_old_config_refuses_other_shapes_and_drops_repeated_rows(
        tmp_path, tfds_dir, monkeypatch):
    workdir = str(tmp_path / 'run')
    # with every tracker on (W&B offline): a resume goes on in the same W&B run
    monkeypatch.setenv('WANDB_CONFIG_DIR', str(tmp_path / 'wandb_home'))
    first = tiny_overrides(tfds_dir, **{'train.steps': 10, 'train.log_every': 2,
                                        'tracking.trackers': "('tensorboard', 'wandb')",
                                        'tracking.wandb.mode': 'offline'})
    loop.train(config_lib.load_config(DEMO, first), workdir)
    with open(os.path.join(workdir, 'config.json')) as f:
        saved = f.read()
    # another width: refused in one sentence naming the key, and nothing in the workdir changes
    wider = config_lib.load_config(DEMO, first + ['model.embed_dim=64', 'train.steps=12'])
    with pytest.raises(UserError, match=r'differs from the one it was saved with '
                                        r'\(model\.embed_dim 32 -> 64; train\.steps 10 -> 12\)'):
        loop.train(wider, workdir)
    with open(os.path.join(workdir, 'config.json')) as f:
        assert f.read() == saved
    # a crash after logging step 12 but before its checkpoint, then a resume with another lr
    with open(os.path.join(workdir, 'metrics.jsonl'), 'a') as f:
        f.write(json.dumps({'step': 12, 'loss': 9.0}) + '\n')
    loop.train(config_lib.load_config(DEMO, first + ['train.steps=14', 'optim.lr=0.002']),
               workdir)
    steps = [r['step'] for r in read_metrics(workdir) if 'loss' in r and 'eval/loss' not in r]
    assert steps == [2, 4, 6, 8, 10, 12, 14]
    assert 9.0 not in [r.get('loss') for r in read_metrics(workdir)]
    history = os.listdir(os.path.join(workdir, 'config_history'))
    assert history == ['config_until_step_000010.json']
    with open(os.path.join(workdir, 'config_history', history[0])) as f:
        assert f.read() == saved
    with open(os.path.join(workdir, 'config.json')) as f:
        assert json.load(f)['optim']['lr'] == 0.002
    with open(os.path.join(workdir, 'summary.json')) as f:      # the last eval, as logged
        assert json.load(f) == {k: v for k, v in read_metrics(workdir)[-1].items()}
    with open(os.path.join(workdir, 'wandb_run_id')) as f:
        run_id = f.read().strip()
    runs = os.listdir(os.path.join(workdir, 'wandb'))
    assert len([r for r in runs if r.startswith('offline-run-') and r.endswith(run_id)]) == 2
    # (the refused resume started none)


@pytest.mark.integration
def test_one_trainer_per_workdir_and_a_killed_one_leaves_no_lock(tmp_path, tfds_dir):
    workdir = str(tmp_path / 'run')
    holder = subprocess.Popen([sys.executable, '-c', (
        'import sys, time\n'
        'from dul_jax.train.workdir_lock import exclusive\n'
        'with exclusive(sys.argv[1]):\n'
        '    print("locked", flush=True)\n'
        '    time.sleep(600)\n'), workdir], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == 'locked'
    cfg = config_lib.load_config(DEMO, tiny_overrides(tfds_dir, **{'train.steps': 2}))
    with pytest.raises(UserError, match=rf'another trainer \(pid {holder.pid} on .*\) is running'):
        loop.train(cfg, workdir)
    assert not os.path.exists(os.path.join(workdir, 'checkpoints'))
    holder.kill()                  # SIGKILL: no clean-up ran, and the kernel dropped the lock
    holder.wait()
    holder.stdout.close()
    with workdir_lock.exclusive(workdir):
        pass
    afile = tmp_path / 'a_file'
    afile.write_text('')
    with pytest.raises(UserError, match='is a file, not a folder'):
        loop.train(cfg, str(afile))


@pytest.mark.integration
def test_gradient_accumulation_is_the_large_batch_update(tfds_dir):
    """A batch of 16 in 2 microbatches of 8 (per device: 2 rows, 1 per microbatch, on 8
    devices) gives the whole batch's gradient, and the train step the same loss and norm."""
    batch = {'image': np.random.default_rng(0).integers(0, 17, (16, 8, 8, 1), np.uint8),
             'label': np.arange(16, dtype=np.int32) % 10}
    out = {}
    for accum in (1, 2):
        cfg = config_lib.load_config(DEMO, tiny_overrides(tfds_dir, **{'train.grad_accum': accum}))
        setup = prepare(cfg)
        with setup.context():
            state = setup.init_state(0)
            def loss(p, b, rng, task=setup.task, step=state.step):
                return task.loss(p, b, rng, StepContext(step))[:2]
            grads = jax.jit(lambda p, b, loss=loss, a=accum: accumulated_grads(
                loss, p, b, jax.random.key(1), a)[1])(state.params, batch)
            _, metrics = setup.train_step()(state, setup.put_batch(batch))
        out[accum] = jax.device_get((grads, metrics['loss'], metrics['grad_norm']))
    chex.assert_trees_all_close(out[2][0], out[1][0], atol=1e-6, rtol=1e-5)
    np.testing.assert_allclose(out[2][1:], out[1][1:], rtol=1e-5)
    assert max(float(np.abs(g).max()) for g in jax.tree.leaves(out[1][0])) > 1e-3
    with pytest.raises(UserError, match='train.grad_accum=3 must be >= 1 and divide'):
        prepare(config_lib.load_config(DEMO, tiny_overrides(tfds_dir, **{'train.grad_accum': 3})))


@pytest.mark.integration
def test_non_finite_loss_stops_with_the_step_named(tmp_path, tfds_dir):
    workdir = str(tmp_path / 'nan')
    cfg = config_lib.load_config(DEMO, tiny_overrides(tfds_dir, **{
        'train.steps': 20, 'optim.lr': 1e30, 'optim.clip_norm': 0.0, 'optim.warmup_steps': 0,
        'optim.schedule': 'constant', 'train.ckpt_every': 1}))
    with pytest.raises(loop.TrainingDiverged, match=r'at step (\d+).*last good checkpoint is') as e:
        loop.train(cfg, workdir)
    bad_step = int(str(e.value).split('at step ')[1].split(';')[0])
    saved = sorted(int(d) for d in os.listdir(os.path.join(workdir, 'checkpoints')) if d.isdigit())
    assert saved and max(saved) < bad_step


def _damage(checkpoint_dir, flip=False):
    """Empty every array data file of a checkpoint (a disk filled up or a copy cut short), or
    flip bytes inside each."""
    for root, _, files in os.walk(os.path.join(checkpoint_dir, 'state')):
        for name in files:
            if root.endswith(os.sep + 'd'):
                with open(os.path.join(root, name), 'r+b' if flip else 'wb') as f:
                    if flip:
                        f.seek(20)
                        f.write(b'\xff\xff\xff\xff')


# A failing read among orbax's concurrent ones would leave the others to finish into its closed
# event loop ("Event loop is closed", unraisable, from a C++ thread): the bytes are read first.
@pytest.mark.filterwarnings('error::pytest.PytestUnraisableExceptionWarning')
@pytest.mark.integration
def test_a_damaged_newest_checkpoint_is_set_aside_and_the_one_before_used(tmp_path, tfds_dir,
                                                                          capsys):
    workdir = str(tmp_path / 'run')
    ckpts = os.path.join(workdir, 'checkpoints')
    base = tiny_overrides(tfds_dir, **{'train.ckpt_every': 2, 'train.log_every': 2})
    loop.train(config_lib.load_config(DEMO, base + ['train.steps=4']), workdir)
    _damage(os.path.join(ckpts, '4'))
    capsys.readouterr()
    # a restart resumes from step 2 with a warning naming step 4 and its cause, then trains on
    # to the end and saves again (a new step 4 beside the one set aside)
    loop.train(config_lib.load_config(DEMO, base + ['train.steps=6']), workdir)
    out, err = capsys.readouterr()
    assert f'checkpoint {ckpts}/4 could not be restored (ValueError: OUT_OF_RANGE' in err
    assert f'moved it to {ckpts}_corrupt/4' in err
    assert f'resumed from {ckpts}/2' in out
    assert sorted(os.listdir(ckpts)) == ['2', '4', '6'] and os.listdir(ckpts + '_corrupt') == ['4']
    steps = [r['step'] for r in read_metrics(workdir) if 'loss' in r and 'eval/loss' not in r]
    assert steps == [2, 4, 6]
    # eval holds no lock on the workdir: it skips the damaged step 6 (a bit flip the recorded
    # checksums see) with a warning and evaluates step 4, moving nothing
    _damage(os.path.join(ckpts, '6'), flip=True)
    cfg = config_lib.load_config(DEMO, base + ['train.steps=6'])
    loop.eval_command(cfg, workdir)
    assert f'{ckpts}/6 could not be restored' in capsys.readouterr().err
    assert os.path.isfile(os.path.join(workdir, 'eval_step_000004.json'))
    assert sorted(os.listdir(ckpts)) == ['2', '4', '6'] and os.listdir(ckpts + '_corrupt') == ['4']
    # another model shape is a mismatch, not damage: refused, and nothing is moved
    wider = prepare(config_lib.load_config(DEMO, base + ['model.embed_dim=64']))
    with pytest.raises(UserError, match=r'/4 was saved with opt_state\.1\.0\.mu\.class_embed\.'
                                        r'embedding float32\[10, 32\], where this config has '
                                        r'float32\[10, 64\]; restore it with the model config'):
        restore_state(ckpts, wider.abstract_state(), step=4)
    assert sorted(os.listdir(ckpts)) == ['2', '4', '6']
    # with none intact, one sentence without "delete"; eval leaves them, a trainer sets each
    # aside, and a step damaged again keeps both copies
    _damage(os.path.join(ckpts, '4'))
    _damage(os.path.join(ckpts, '2'))
    abstract = prepare(cfg).abstract_state()
    with pytest.raises(UserError, match=r'none of the checkpoints \[6, 4, 2\] .* could be '
                                        r'restored \(each left in place') as e:
        restore_state(ckpts, abstract)
    assert 'delete' not in str(e.value)
    assert sorted(os.listdir(ckpts)) == ['2', '4', '6']
    ckpt = Checkpointer(ckpts, async_save=False)
    with pytest.raises(UserError, match=r'\(each is kept in .*_corrupt/'):
        ckpt.restore(abstract)
    ckpt.close()
    assert sorted(os.listdir(ckpts + '_corrupt')) == ['2', '4', '4.1', '6']
    assert os.listdir(ckpts) == []


@pytest.mark.integration
def test_a_checkpoint_saved_by_other_process_counts_resumes_at_the_same_global_batch(
        tmp_path, tfds_dir, capsys):
    """The data position is global (every process at the same global batch), so a checkpoint
    written by 2 processes resumes in 1 exactly where an unbroken run goes on, and one written by
    4 puts the iterator at the same batch; positions that disagree are refused; neither case
    moves a readable checkpoint aside."""
    # a constant LR after a 1-step warmup: the schedule does not depend on train.steps
    base = tiny_overrides(tfds_dir, **{'train.ckpt_every': 2, 'train.log_every': 1,
                                       'optim.schedule': 'constant', 'optim.warmup_steps': 1})
    unbroken, workdir = str(tmp_path / 'unbroken'), str(tmp_path / 'saved_by_2')
    loop.train(config_lib.load_config(DEMO, base + ['train.steps=6']), unbroken)
    loop.train(config_lib.load_config(DEMO, base + ['train.steps=4']), workdir)
    data = pathlib.Path(workdir, 'checkpoints', '4', 'data')
    position = (data / 'process_0-of-1.json').read_text()
    (data / 'process_0-of-1.json').unlink()
    for i in range(2):   # what each process of a 2-process run writes
        (data / f'process_{i}-of-2.json').write_text(position)
    capsys.readouterr()
    loop.train(config_lib.load_config(DEMO, base + ['train.steps=6']), workdir)
    assert 'saved by 2 process(es) and is resumed by 1' in capsys.readouterr().err
    assert not os.path.exists(os.path.join(workdir, 'checkpoints_corrupt'))
    losses = [[r['loss'] for r in read_metrics(w) if 'loss' in r and 'eval/loss' not in r]
              for w in (workdir, unbroken)]
    np.testing.assert_array_equal(losses[0], losses[1])
    # saved by 4 processes: the iterator resumes at their common global batch
    cfg = config_lib.load_config(DEMO, base)
    four = tmp_path / 'four'
    four.mkdir()
    for i in range(4):
        (four / f'process_{i}-of-4.json').write_text(json.dumps({'next_index': 3}))
    resumed, fresh = (data_lib.train_iterator(cfg.data, 16, seed=0) for _ in range(2))
    restore_position(four, resumed)
    for _ in range(3):
        next(fresh)
    np.testing.assert_array_equal(next(resumed)['image'], next(fresh)['image'])
    (four / 'process_3-of-4.json').write_text(json.dumps({'next_index': 4}))
    with pytest.raises(UserError, match=r'were at different data positions .* resume it with '
                                        r'the process count it was saved with\.$'):
        restore_position(four, resumed)


def _param_dtype_setup(tfds_dir, param_dtype, devices=None, **extra):
    return prepare(config_lib.load_config(DEMO, tiny_overrides(tfds_dir, **{
        'model.param_dtype': param_dtype, 'optim.ema_decay': 0.99, **extra})), devices=devices)


def _is_matrix(path):
    return str(path[-1].key).endswith(('kernel', 'embedding', 'embed'))


def test_bfloat16_params_halve_the_state_and_keep_vectors_float32(tfds_dir):
    """Matrices, embedding tables and their Adam moments in bf16; biases, LayerNorm scales (2-D
    under the scanned stack) and the EMA in f32; params + opt_state bytes about half."""
    states = {d: _param_dtype_setup(tfds_dir, d).abstract_state() for d in ('float32', 'bfloat16')}
    half = states['bfloat16']
    adam = half.opt_state[1][0]
    for tree in (half.params, adam.mu, adam.nu):
        for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
            assert leaf.dtype == (jax.numpy.bfloat16 if _is_matrix(path) else np.float32), path
    assert half.params['stack']['blocks']['ln_attn']['scale'].ndim == 2
    assert {x.dtype for x in jax.tree.leaves(half.ema_params)} == {np.dtype(np.float32)}
    full = bytes_per_device((states['float32'].params, states['float32'].opt_state))
    shards = jax.tree.leaves(jax.tree_util.tree_map_with_path(
        lambda path, x: _is_matrix(path) * int(np.prod(x.sharding.shard_shape(x.shape))),
        (half.params, adam.mu, adam.nu)))
    assert bytes_per_device((half.params, half.opt_state)) == full - 2 * sum(shards)
    assert 0.5 < bytes_per_device((half.params, half.opt_state)) / full < 0.55


@pytest.mark.integration
def test_bfloat16_params_train_like_float32_and_keep_their_dtypes(tfds_dir):
    """Three steps from the same init (the f32 one, cast: what the bf16 init is) on one device."""
    batch = {'image': np.random.default_rng(0).integers(0, 17, (16, 8, 8, 1), np.uint8),
             'label': np.arange(16, dtype=np.int32) % 10}
    setups = {d: _param_dtype_setup(tfds_dir, d, **{'optim.lr': 3e-3, 'optim.warmup_steps': 0},
                                    devices=jax.devices()[:1]) for d in ('float32', 'bfloat16')}
    half = setups['bfloat16'].abstract_state()
    with setups['float32'].context():
        full = jax.device_get(setups['float32'].init_state(0))
    # a device copy for each run: the train step donates its state
    like = {'float32': full, 'bfloat16': half}
    states = {d: jax.device_put(jax.tree.map(lambda x, a: x.astype(a.dtype), full, like[d]),
                                s.state_shardings) for d, s in setups.items()}
    dtypes = lambda tree: jax.tree.map(lambda x: x.dtype, tree)
    losses = {}
    for dtype, setup in setups.items():
        with setup.context():
            state, step, losses[dtype] = states[dtype], setup.train_step(), []
            for _ in range(3):
                state, metrics = step(state, setup.put_batch(batch))
                losses[dtype].append(float(metrics['loss']))
        assert dtypes(state) == dtypes(setup.abstract_state())
    assert losses['float32'][-1] < 0.9 * losses['float32'][0]
    np.testing.assert_allclose(losses['bfloat16'], losses['float32'], rtol=1e-3)


def test_an_unknown_param_dtype_is_refused_in_one_sentence(tfds_dir):
    with pytest.raises(UserError) as e:   # str(e): what the CLI prints, without jax's notes
        _param_dtype_setup(tfds_dir, 'float16')
    assert str(e.value) == 'model.param_dtype must be one of float32, bfloat16, got "float16".'


def _rows(steps):
    return ''.join(json.dumps({'step': s, 'loss': 1.0 / s}) + '\n' for s in steps)


@pytest.mark.parametrize('damage, message', [
    # a full disk or a crashed node: the last write cut short, without its newline
    (_rows([1, 2, 3]) + '{"step": 4, "lo', 'the last line of {} was cut short'),
    # damage further up: the valid rows around it are kept and the line named
    (_rows([1]) + '\x00\x00\x00\n' + _rows([2, 3]) + '{"step"\n', r'line\(s\) 2, 5 of {} are'),
])
def test_a_damaged_metrics_file_loses_no_valid_row_on_resume(tmp_path, capsys, damage, message):
    path = tmp_path / 'metrics.jsonl'
    path.write_text(damage)
    writer = MetricWriter(str(tmp_path))
    writer.start(2)          # what a resume from the checkpoint at step 2 does
    writer.write(3, {'loss': 0.5})
    writer.close()
    assert read_metrics(str(tmp_path)) == [{'step': 1, 'loss': 1.0}, {'step': 2, 'loss': 0.5},
                                           {'step': 3, 'loss': 0.5}]
    warning = capsys.readouterr().err
    assert re.search(message.format(re.escape(str(path))), warning)
    assert warning.startswith('warning: ') and warning.count('\n') == 1
