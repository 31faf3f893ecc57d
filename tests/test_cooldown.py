"""Cooldown branches of a warmup-stable-decay run: a branch from step k with d decay steps is the
run of k + d steps trained from scratch, refusals come before anything trains, a finished branch
is not trained again, and a copy cut short is never taken for a checkpoint."""

import json
import os

import jax
import numpy as np
import pytest
from conftest import gcs_emulator
from etils import epath

from dul_jax import cli
from dul_jax import config as config_lib
from dul_jax.errors import UserError
from dul_jax.scaling import cooldown
from dul_jax.train import loop
from dul_jax.train.checkpoint import restore_state
from dul_jax.train.setup import prepare

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(REPO, 'experiments', 'configs', 'demo.py')
K, D, T = 3, 3, 6   # branch at step 3 of a 6-step stable run, 3 decay steps


def tiny(tfds_dir, **extra):
    """A 1-layer iGPT on digits with dropout and EMA (both must carry over), a loss row per step
    and a checkpoint every K steps."""
    items = {'data.tfds_dir': tfds_dir, 'model.num_layers': 1, 'model.num_heads': 2,
             'model.embed_dim': 16, 'model.mlp_dim': 32, 'model.dropout': 0.1,
             'train.batch_size': 16, 'train.log_every': 1, 'train.eval_every': 0,
             'train.ckpt_every': K, 'train.steps': T, 'eval.batch_size': 64,
             'eval.max_examples': 64, 'sample.num': 2, 'optim.lr': 3e-3,
             'optim.warmup_steps': 2, 'optim.ema_decay': 0.9, 'optim.schedule': 'wsd',
             'optim.decay_fraction': 0.0, 'optim.decay_shape': 'linear'}
    items.update(extra)
    return config_lib.load_config(DEMO, [f'{k}={v}' for k, v in items.items()])


def losses(workdir):
    with open(os.path.join(workdir, 'metrics.jsonl')) as f:
        return {r['step']: r['loss'] for r in map(json.loads, f) if 'loss' in r}


def final_params(workdir, cfg):
    state = restore_state(os.path.join(workdir, 'checkpoints'), prepare(cfg).abstract_state())
    return jax.device_get(state.params), int(state.step)


@pytest.mark.integration
def test_a_branch_is_the_run_of_k_plus_d_steps_and_is_trained_once(tmp_path, tfds_dir, capsys,
                                                                  monkeypatch):
    stable = str(tmp_path / 'stable')
    loop.train(tiny(tfds_dir), stable)
    # refused in one sentence before anything trains: a step not kept, a stable run that decays
    with pytest.raises(UserError, match=r'step 2 is not a kept checkpoint .* \(kept: 3, 6\)'):
        cooldown.branch(stable, 2, D, str(tmp_path / 'b2'))
    decaying = tmp_path / 'decaying'
    decaying.mkdir()
    (decaying / 'config.json').write_text(config_lib.to_json(tiny(tfds_dir, **{
        'optim.decay_fraction': 0.2})))
    assert cli.main(['cooldown', '--workdir', str(decaying), '--steps', '3',
                     '--decay-steps', '3']) == 2
    assert 'cooldown branches start from a stable-phase run' in capsys.readouterr().err
    assert not (tmp_path / 'b2').exists() and not (decaying / 'cooldowns').exists()

    # killed once its checkpoint is copied; the rerun resumes it from there
    out = os.path.join(stable, 'cooldowns', f'cooldown_k{K}_d{D}')
    with monkeypatch.context() as m:
        m.setattr(loop, 'train', lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
        with pytest.raises(KeyboardInterrupt):
            cooldown.branch(stable, K, D, out)
    assert cooldown.kept_steps(os.path.join(out, 'checkpoints')) == [K]
    assert cli.main(['cooldown', '--workdir', stable, '--steps', str(K),
                     '--decay-steps', str(D)]) == 0
    printed = capsys.readouterr().out
    scratch = str(tmp_path / 'scratch')
    single = tiny(tfds_dir, **{'train.steps': K + D, 'optim.decay_steps': D})
    final = loop.train(single, scratch)

    # up to K the branch is the stable run; after it, step for step the run from scratch
    branch_losses, scratch_losses = losses(out), losses(scratch)
    assert sorted(branch_losses) == list(range(K + 1, K + D + 1))
    np.testing.assert_allclose([branch_losses[s] for s in branch_losses],
                               [scratch_losses[s] for s in branch_losses], rtol=1e-6)
    assert scratch_losses[K + D] != losses(stable)[K + D]   # the decay made a difference
    (a, step_a), (b, step_b) = final_params(out, single), final_params(scratch, single)
    assert step_a == step_b == K + D
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)

    with open(os.path.join(out, 'result.json')) as f:
        result = json.load(f)
    assert result['loss'] == pytest.approx(final['loss'], rel=1e-6)
    assert f'cooldown_k{K}_d{D}: eval loss {result["loss"]:.4f}' in printed
    assert result['D'] == (K + D) * 16 * 64 and result['steps'] == K + D
    assert result['branch_step'] == K and result['overrides'] == {
        'branch_of': stable, 'train.steps': K + D, 'optim.decay_steps': D}
    with open(os.path.join(stable, 'cooldowns', 'results.jsonl')) as f:
        assert [json.loads(line)['name'] for line in f] == [f'cooldown_k{K}_d{D}']

    # a finished branch is not trained again; another config in its folder is refused
    monkeypatch.setattr(loop, 'train', lambda *a, **k: pytest.fail('trained again'))
    assert cooldown.branch(stable, K, D, out) == result
    assert cli.main(['cooldown', '--workdir', stable, '--steps', str(K), '--decay-steps',
                     str(D)]) == 0
    assert 'finished earlier' in capsys.readouterr().out
    with pytest.raises(UserError, match='already holds a different run'):
        cooldown.branch(stable, K, D, out, ['optim.decay_shape=cosine'])


def _fake_step(root) -> epath.Path:
    """An orbax-like step folder: files in subfolders and orbax's commit file."""
    step = epath.Path(root) / '5'
    for name in ('state/manifest.ocdbt', 'state/d/abc', 'data/process_0-of-1.json',
                 cooldown.COMMIT_FILE):
        (step / name).parent.mkdir(parents=True, exist_ok=True)
        (step / name).write_text(name)
    return step


def _copy_cut_short(source, checkpoints, monkeypatch):
    """copy_checkpoint killed as it copies its second file."""
    copied, real_copy = [], cooldown._copy_file

    def failing_copy(src, dest):
        copied.append(src)
        if len(copied) == 2:
            raise KeyboardInterrupt('killed mid-copy')
        real_copy(src, dest)
    with monkeypatch.context() as m:
        m.setattr(cooldown, '_copy_file', failing_copy)
        with pytest.raises(KeyboardInterrupt):
            cooldown.copy_checkpoint(source, checkpoints, 5)


@pytest.mark.parametrize('where', ['local', pytest.param('gcs', marks=pytest.mark.integration)])
def test_a_copy_cut_short_is_no_checkpoint(where, tmp_path, monkeypatch):
    source = _fake_step(tmp_path / 'stable')
    if where == 'local':
        _check_copy(source, epath.Path(tmp_path / 'branch' / 'checkpoints'), monkeypatch)
        return
    with gcs_emulator('dul-jax-cooldown') as env:
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        _check_copy(source, epath.Path('gs://dul-jax-cooldown/branch/checkpoints'), monkeypatch)


def _check_copy(source, checkpoints, monkeypatch):
    _copy_cut_short(source, checkpoints, monkeypatch)
    assert cooldown.kept_steps(checkpoints) == []   # orbax sees no finished step
    cooldown.copy_checkpoint(source, checkpoints, 5)   # the rerun copies it whole
    assert cooldown.kept_steps(checkpoints) == [5]
    assert cooldown.files(checkpoints / '5') == cooldown.files(source)
    assert (checkpoints / '5' / 'state' / 'd' / 'abc').read_text() == 'state/d/abc'


def test_cooldown_help_says_what_it_does(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(['cooldown', '--help'])
    out = ' '.join(capsys.readouterr().out.split())
    assert e.value.code == 0
    for fragment in ('--steps', '--decay-steps', '--out', 'optim.decay_fraction=0',
                     'OUT/cooldown_kK_dD', 'train.steps=K+D', 'final eval loss'):
        assert fragment in out, fragment
