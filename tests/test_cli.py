"""The dul-jax command: bad input ends with status 2 and one sentence; train/eval/sample work."""

import argparse
import os
import subprocess
import sys

import jax
import pytest

from dul_jax import cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(REPO, 'experiments', 'configs', 'demo.py')
TINY = ['--config.model.num_layers=1', '--config.model.embed_dim=32', '--config.model.mlp_dim=64',
        '--config.train.batch_size=16', '--config.eval.max_examples=64', '--config.sample.num=4']


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith('error:')]


@pytest.mark.parametrize('extra, fragment', [
    (['--config.train.stpes=3'], 'unknown config key "train.stpes"'),
    (['--config.train.steps=many'], 'not a valid int'),
    (['--config.train.batch_size=12'], 'cannot be split over the 8 batch shards'),
    (['--config.data.name=cifar10'], "data set 'cifar10' is not prepared"),
    # a closed port as the mirror, so the fetch fails here even with internet
    (['--config.data.name=binarized_mnist', '--config.data.dir=/nonexistent',
      '--config.data.url=http://127.0.0.1:9',
      '--config.data.tfds_dir=/tmp/dul_jax_test_not_prepared'],
     '--config.data.dir'),
    (['--config.model.embed_dim=30'], 'must be a multiple of model.num_heads'),
    (['--config.mesh.data=3'], 'mesh'),
    (['--steps=3'], 'unrecognised argument'),
])
def test_bad_input_is_one_sentence_and_status_2(extra, fragment, tmp_path, tfds_dir, capsys):
    argv = ['train', '--config', DEMO, '--workdir', str(tmp_path / 'w'),
            f'--config.data.tfds_dir={tfds_dir}', *extra]
    assert cli.main(argv) == 2
    errors = _error_lines(capsys.readouterr().err)
    assert len(errors) == 1 and fragment in errors[0], errors
    assert not os.path.exists(tmp_path / 'w' / 'checkpoints')  # nothing ran


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(['--version'])
    assert e.value.code == 0 and capsys.readouterr().out.startswith('dul-jax 0.')


@pytest.mark.integration
def test_real_command_exits_2_without_traceback(tmp_path):
    proc = subprocess.run([sys.executable, '-m', 'dul_jax.cli', 'train', '--config', DEMO,
                           '--workdir', str(tmp_path), '--config.optim.lrr=1'],
                          check=False, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert 'Traceback' not in proc.stderr
    assert _error_lines(proc.stderr) == [(
        'error: unknown config key "optim.lrr"; check the spelling (known here: b1, b2, '
        'clip_norm, decay_fraction, decay_shape, decay_steps, ema_decay, lr, min_lr_ratio, '
        'optimizer, schedule, warmup_steps, weight_decay).')]


@pytest.mark.integration
def test_mistakes_in_configs_and_folders_are_said_before_jax_is_imported(tmp_path):
    # the trainer's imports take seconds; a typo should not wait for them. Every shipped config
    # is read without jax too (dul_jax/model_configs.py).
    cases = [(['train', '--config', 'nope.py', '--workdir', str(tmp_path)],
              ('error: config nope.py is neither a file nor a shipped config; pass a config '
               'file or a shipped name such as demo (`dul-jax configs` lists all 38).')),
             (['train', '--config', 'demo', '--workdir', str(tmp_path), '--config.nope=1'],
              'error: unknown config key "nope"; check the spelling'),
             (['eval', '--workdir', str(tmp_path / 'none')],
              f'error: {tmp_path / "none"} has no config.json'),
             (['sample', '--workdir', str(tmp_path), '--num', '0'],
              'error: --num must be positive, got 0.'),
             (['configs', '--config.train.steps=3'],
              'error: dul-jax configs takes no --config.KEY=VALUE')]
    code = ('import sys\nfrom dul_jax import cli, config\n'
            f'for argv in {[argv for argv, _ in cases]!r}:\n    assert cli.main(argv) == 2\n'
            'for name in config.shipped_configs():\n    config.load_config(name)\n'
            'assert "jax" not in sys.modules, "jax was imported"\n')
    proc = subprocess.run([sys.executable, '-c', code], check=False, cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    said = _error_lines(proc.stderr)
    assert len(said) == len(cases)
    for line, (_, expected) in zip(said, cases, strict=True):
        assert line.startswith(expected), line


@pytest.mark.integration
def test_train_eval_sample_and_debug(tmp_path, tfds_dir, capsys):
    workdir = str(tmp_path / 'run')
    common = [f'--config.data.tfds_dir={tfds_dir}', *TINY]
    assert cli.main(['train', '--config', DEMO, '--workdir', workdir,
                     '--config.train.steps=3', *common]) == 0
    out = capsys.readouterr()
    assert 'no accelerator found: running on the CPU' in out.err
    assert 'samples:' in out.out
    # stderr is no terminal here: plain progress lines, no carriage-return bar
    assert '\r' not in out.err and 'step 3/3: loss ' in out.out
    assert cli.main(['eval', '--workdir', workdir]) == 0
    assert os.path.isfile(os.path.join(workdir, 'eval_step_000003.json'))
    assert cli.main(['sample', '--workdir', workdir, '--num', '10', '--seed', '3']) == 0
    assert os.path.isfile(os.path.join(workdir, 'samples', 'step_000003.png'))
    assert cli.main(['sample', '--workdir', str(tmp_path / 'none')]) == 2
    # --debug: NaN checks on and the step run eagerly; two more steps resume from step 3
    try:
        assert cli.main(['train', '--config', DEMO, '--workdir', workdir, '--debug',
                         '--config.train.steps=5', *common]) == 0
        assert jax.config.jax_debug_nans
    finally:
        jax.config.update('jax_debug_nans', False)
    assert 'resumed from' in capsys.readouterr().out


def test_inspect_refuses_the_pmap_path_in_one_sentence(tfds_dir, capsys):
    assert cli.main(['inspect', '--config', DEMO, f'--config.data.tfds_dir={tfds_dir}',
                     '--config.parallelism=pmap']) == 2
    assert _error_lines(capsys.readouterr().err) == [
        ('error: dul-jax inspect reports the shardings of the jit path; parallelism="pmap" '
         'replicates the state in one process: run it with --config.parallelism=jit.')]


# ---- dul-jax data prepare ----

def test_data_prepare_leaves_a_data_set_that_describe_finds(tmp_path, capsys, monkeypatch):
    import functools

    from dul_jax import config as config_lib
    from dul_jax import data
    from dul_jax.data import catalog
    tfds_dir = tmp_path / 'tfds'
    assert cli.main(['data', 'prepare', 'digits', '--dir', str(tfds_dir)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == (
        f'prepared digits (train: 1,500 examples; test: 297 examples) in '
        f'{tfds_dir}/dul_digits/1.0.0')
    # A later run (a fresh process: no cached builders) reads it and prepares nothing.
    monkeypatch.setattr(catalog, '_ENTRIES', {})
    monkeypatch.setattr(catalog, 'prepared_builder',
                        functools.cache(catalog.prepared_builder.__wrapped__))

    def no_second_prepare(*args, **kwargs):
        raise AssertionError('the data set was prepared again')

    monkeypatch.setattr(catalog.LOCAL_BUILDERS['digits'], '_split_generators', no_second_prepare)
    cfg = config_lib.base_config()
    cfg.data.name, cfg.data.tfds_dir = 'digits', str(tfds_dir)
    spec = data.describe(cfg.data)
    assert (spec.num_train, spec.num_eval, spec.num_levels) == (1500, 297, 17)


def test_data_prepare_refuses_an_unknown_name_in_one_sentence(tmp_path, capsys):
    assert cli.main(['data', 'prepare', 'no_such_data', '--dir', str(tmp_path)]) == 2
    assert _error_lines(capsys.readouterr().err) == [(
        "error: unknown data set 'no_such_data'; name a local data set (binarized_mnist, digits, "
        "mnist_test, python_source, tiny_shakespeare) or a TFDS catalog name such as mnist or "
        "tfds:tiny_shakespeare.")]
    assert cli.main(['data', 'prepare', 'digits', '--dir', str(tmp_path),
                     '--config.train.steps=3']) == 2
    assert 'takes only --config.data.KEY=VALUE' in capsys.readouterr().err


def test_data_prepare_help_says_what_it_does(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(['data', 'prepare', '--help'])
    out = capsys.readouterr().out
    assert e.value.code == 0
    for fragment in ('NAME', '--dir', 'first `dul-jax train`', 'data.tfds_dir',
                     '$DUL_JAX_DATA_DIR', '--config.data.url'):
        assert fragment in ' '.join(out.split()), fragment


@pytest.mark.integration
def test_data_prepare_command_prints_one_line_and_no_tfds_warning(tmp_path):
    proc = subprocess.run([sys.executable, '-m', 'dul_jax.cli', 'data', 'prepare', 'digits',
                           '--dir', str(tmp_path)], check=False, cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == (
        f'prepared digits (train: 1,500 examples; test: 297 examples) in '
        f'{tmp_path}/dul_digits/1.0.0')
    assert 'Variant folder' not in proc.stderr and 'dataset_info.json' not in proc.stderr


@pytest.mark.integration
def test_a_non_editable_install_knows_its_configs_from_another_folder(tmp_path):
    site = tmp_path / 'site'
    subprocess.run([sys.executable, '-m', 'pip', 'install', '-q', '--no-deps',
                    '--no-build-isolation', '--target', str(site), REPO],
                   check=True, capture_output=True, timeout=300)
    assert (site / 'dul_jax' / 'configs' / 'pod' / 'gpt_1b.py').is_file()
    assert (site / 'dul_jax' / 'sharding' / 'gpu_targets' / 'h100.txtpb').is_file()
    code = ('import sys\nfrom dul_jax import cli, config\n'
            f'assert config.__file__.startswith({str(site)!r}), config.__file__\n'
            'sys.exit(cli.main(sys.argv[1:]))\n')

    def dul_jax(*argv):
        return subprocess.run([sys.executable, '-c', code, *argv], cwd=tmp_path, check=False,
                              capture_output=True, text=True, timeout=120,
                              env=dict(os.environ, PYTHONPATH=str(site)))
    listed = dul_jax('configs')
    assert listed.returncode == 0, listed.stderr
    assert any(line.split()[:3] == ['demo', 'autoregressive', 'digits']
               for line in listed.stdout.splitlines())
    # a shipped name, and the checkout's path from another folder, reach the installed file
    for name in ('demo', 'experiments/configs/demo.py'):
        proc = dul_jax('train', '--config', name, '--workdir', 'run', '--config.nope=1')
        assert proc.returncode == 2, proc.stderr
        assert _error_lines(proc.stderr)[0].startswith('error: unknown config key "nope"')
    assert not (tmp_path / 'run').exists()


def test_every_flag_says_what_it_takes_and_the_configs_named_in_help_are_shipped():
    from dul_jax import config as config_lib

    def parsers(p):
        yield p
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for child in action.choices.values():
                    yield from parsers(child)
    silent = [f'{p.prog} {a.option_strings or a.dest}' for p in parsers(cli._parser())
              for a in p._actions if not a.help and not isinstance(a, argparse._SubParsersAction)]
    assert silent == []
    assert set(cli._SHIPPED_NAMES) <= set(config_lib.shipped_configs())
    # every command that takes --config.KEY=VALUE says so (sweep refuses them, configs reads
    # no config), and every one that reads --config CONFIG lists the shipped configs
    commands = [p for p in parsers(cli._parser())
                if not any(isinstance(a, argparse._SubParsersAction) for a in p._actions)]
    assert len(commands) >= 14
    for p in commands:
        text = ' '.join(p.format_help().split())
        said = '--config.data.KEY=VALUE' if p.prog.endswith('data prepare') else \
            '--config.KEY=VALUE'
        takes_overrides = p.prog not in ('dul-jax sweep', 'dul-jax configs')
        assert (said in text) == takes_overrides, p.prog
        if any('--config' in a.option_strings for a in p._actions):
            assert all(f' {name} ' in text for name in cli._SHIPPED_NAMES), p.prog


def test_config_show_prints_the_resolved_config(capsys):
    import json

    from dul_jax import config as config_lib
    assert cli.main(['config', 'show', '--config', 'demo', '--config.train.steps=5',
                     '--config.model.dropout=0.25']) == 0
    shown = json.loads(capsys.readouterr().out)
    expected = config_lib.load_config('demo', ['train.steps=5', 'model.dropout=0.25']).to_dict()
    assert shown['train']['steps'] == 5 and shown['model']['dropout'] == 0.25
    assert set(shown) == set(expected) and shown['optim'] == expected['optim']
    assert config_lib.from_json(json.dumps(shown)) == config_lib.from_json(
        config_lib.to_json(config_lib.load_config('demo', ['train.steps=5', 'model.dropout=0.25'])))
    assert cli.main(['config', 'show', '--config', 'demo', '--config.nope=1']) == 2
