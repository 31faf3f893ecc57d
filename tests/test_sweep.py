"""The sweep runner: every run trains once, a crashed sweep resumes without redoing finished runs,
shards split the list, and the results table carries N, D and C."""

import json
import os

import pytest

from dul_jax import cli
from dul_jax.errors import UserError
from dul_jax.scaling import sweep
from dul_jax.train import loop

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SWEEP_FILE = '''
from dul_jax import config as config_lib
from dul_jax.scaling.sweep import SweepRun


def get_sweep():
    base = config_lib.load_config({demo!r})
    base.data.tfds_dir = {tfds_dir!r}
    base.model.update(num_layers=1, num_heads=2, embed_dim=16, mlp_dim=32)
    base.train.update(steps=6, batch_size=8, log_every=3, eval_every=0, ckpt_every=3)
    base.eval.update(batch_size=64, max_examples=64)
    base.sample.num = 2
    runs = [SweepRun('w16', {{}}, budget=1e9),
            SweepRun('w32', {{'model.embed_dim': 32}}, budget=1e9),
            SweepRun('w32_long', {{'model.embed_dim': 32, 'train.steps': 9}})]
    return base, runs
'''


@pytest.fixture
def sweep_file(tmp_path, tfds_dir):
    path = tmp_path / 'sweep.py'
    demo = os.path.join(REPO, 'experiments', 'configs', 'demo.py')
    path.write_text(SWEEP_FILE.format(demo=demo, tfds_dir=tfds_dir))
    return str(path)


@pytest.fixture
def train_calls(monkeypatch):
    """Counts loop.train calls by run directory name; `crash_on` makes one of them raise."""
    class Calls(list):
        def __init__(self):
            super().__init__()
            self.state = {'crash_on': None}

    calls, real_train = Calls(), loop.train
    state = calls.state

    def counting_train(cfg, workdir, debug=False):
        name = os.path.basename(workdir)
        calls.append(name)
        if name == state['crash_on']:
            raise KeyboardInterrupt('simulated kill')
        return real_train(cfg, workdir, debug)
    monkeypatch.setattr(loop, 'train', counting_train)
    return calls


@pytest.mark.integration
def test_killed_sweep_resumes_without_redoing_finished_runs(sweep_file, tmp_path, train_calls):
    workdir = str(tmp_path / 'sweep')
    train_calls.state['crash_on'] = 'w32'
    with pytest.raises(KeyboardInterrupt):
        sweep.run_sweep(sweep_file, workdir)
    assert train_calls == ['w16', 'w32']
    with open(os.path.join(workdir, 'results.jsonl')) as f:
        assert [json.loads(line)['name'] for line in f] == ['w16']
    first = os.path.getmtime(os.path.join(workdir, 'runs', 'w16', 'result.json'))

    train_calls.state['crash_on'] = None
    results = sweep.run_sweep(sweep_file, workdir)
    assert train_calls == ['w16', 'w32', 'w32', 'w32_long']   # w16 was not trained again
    assert os.path.getmtime(os.path.join(workdir, 'runs', 'w16', 'result.json')) == first
    assert [r['name'] for r in results] == ['w16', 'w32', 'w32_long']
    by_name = {r['name']: r for r in results}
    # D counts tokens: steps x batch x 64 pixels; C uses the same FLOPs per token for both w32s
    assert by_name['w16']['D'] == 6 * 8 * 64 and by_name['w32_long']['D'] == 9 * 8 * 64
    assert by_name['w32']['C'] / 6 == pytest.approx(by_name['w32_long']['C'] / 9)
    assert by_name['w16']['N'] < by_name['w32']['N'] < by_name['w32']['N_total']
    assert by_name['w32_long']['budget'] is None and by_name['w16']['budget'] == 1e9
    assert all(r['loss'] > 0 and not r['diverged'] for r in results)

    assert sweep.run_sweep(sweep_file, workdir) == results       # all done: nothing retrained
    assert len(train_calls) == 4


@pytest.mark.integration
def test_shards_split_the_runs(sweep_file, tmp_path, train_calls):
    workdir = str(tmp_path / 'sweep')
    assert cli.main(['sweep', '--sweep', sweep_file, '--workdir', workdir, '--shard', '1/2',
                     '--no-report']) == 0
    assert train_calls == ['w32']
    assert cli.main(['sweep', '--sweep', sweep_file, '--workdir', workdir, '--shard', '0/2',
                     '--no-report']) == 0
    assert train_calls == ['w32', 'w16', 'w32_long']
    with open(os.path.join(workdir, 'results.jsonl')) as f:
        assert [json.loads(line)['name'] for line in f] == ['w16', 'w32', 'w32_long']


@pytest.mark.integration
def test_edited_sweep_and_bad_shard_are_refused(sweep_file, tmp_path, train_calls):
    with pytest.raises(UserError, match='0 <= I < N'):
        sweep.parse_shard('2/2')
    workdir = str(tmp_path / 'sweep')
    base, runs = sweep.load_sweep(sweep_file)
    sweep.run_one(base, runs[0], workdir)
    edited = sweep.SweepRun('w16', {'model.embed_dim': 64})
    with pytest.raises(UserError, match='different config'):
        sweep.run_one(base, edited, workdir)
    with pytest.raises(UserError, match='unknown config key'):
        sweep.run_config(base, sweep.SweepRun('bad', {'model.width': 3}))
    with pytest.raises(UserError, match='unknown config key "modle"'):
        sweep.run_config(base, sweep.SweepRun('bad', {'modle.embed_dim': 3}))
    # a typo in the last run stops the sweep before its first run, not after the others
    broken = tmp_path / 'broken_sweep.py'
    with open(sweep_file) as f:
        broken.write_text(f.read().replace("'train.steps': 9", "'train.steps': '9'"))
    with pytest.raises(UserError, match='holds int values'):
        sweep.load_sweep(str(broken))


def test_measure_counts_every_layer_of_a_scanned_dit():
    """XLA counts a scanned body once; measure() unrolls, so each block adds the same FLOPs, and
    a training step costs about 3 forward passes (backward = 2x forward) per example."""
    from dul_jax.config import load_config
    base = load_config(os.path.join(REPO, 'experiments', 'configs', 'dit_digits.py'))
    base.model.update(embed_dim=16, mlp_dim=32, num_heads=2, scan_unroll=1)
    base.train.batch_size = 4
    flops = [sweep.measure_overrides(base, {'model.num_layers': depth}) for depth in (1, 2, 4)]
    one, two, four = (m['C'] for m in flops)
    assert two > one and four - two == pytest.approx(2 * (two - one), rel=1e-3)
    for m in flops:
        assert m['C'] / 4 == pytest.approx(3 * m['F_forward'], rel=0.1)
        assert m['F_features'] is None   # diffusion gives no probe features


def test_sweep_file_report_options(tmp_path):
    path = tmp_path / 'opts.py'
    path.write_text("REPORT = {'units': 'bits/dim', 'literature': False}\n")
    assert sweep.report_options(str(path)) == {'units': 'bits/dim', 'literature': False}
    path.write_text("REPORT = {'unit': 'bits/dim'}\n")
    with pytest.raises(UserError, match=r"unknown keys \['unit'\]"):
        sweep.report_options(str(path))


def _with_runs(sweep_file, runs_source):
    """The test sweep with its runs replaced by `runs_source` (a Python list expression)."""
    with open(sweep_file) as f:
        text = f.read()
    with open(sweep_file, 'w') as f:
        f.write(text + f'\n\n_base = get_sweep\n\n\ndef get_sweep():\n'
                       f'    return _base()[0], {runs_source}\n')
    return sweep_file


@pytest.mark.parametrize('name', ['../escape', 'a/b', '', '.', '..', 'a\\b', 'a\0b', 7])
def test_run_names_that_are_not_one_folder_are_refused_before_any_run(sweep_file, name):
    path = _with_runs(sweep_file, f'[SweepRun("ok", {{}}), SweepRun({name!r}, {{}})]')
    with pytest.raises(UserError, match='must be one plain folder name') as e:
        sweep.load_sweep(path)
    assert path in str(e.value) and repr(name) in str(e.value)


def test_an_empty_sweep_is_one_sentence(sweep_file, tmp_path, capsys):
    path = _with_runs(sweep_file, '[]')
    with pytest.raises(UserError, match='defines no runs'):
        sweep.load_sweep(path)
    assert cli.main(['sweep', '--sweep', path, '--workdir', str(tmp_path / 'w')]) == 2
    err = capsys.readouterr().err
    assert err.startswith('error: the sweep file') and err.count('\n') == 1
    assert not (tmp_path / 'w').exists()
