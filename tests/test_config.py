"""Config loading and overrides: every user mistake is one clear UserError."""

import os
import subprocess
import sys

import pytest

from dul_jax import config as config_lib
from dul_jax.errors import UserError
from dul_jax.sharding.mesh import mesh_shape

DEMO = str(config_lib.__file__).replace('dul_jax/config.py', 'experiments/configs/demo.py')


def test_overrides_parse_as_the_existing_type():
    cfg = config_lib.load_config(DEMO, ['train.steps=7', 'optim.lr=0.5', 'model.dropout=0',
                                        'model.class_conditional=false',
                                        'data.name=tiny_shakespeare',
                                        'mesh.rules=(("embed", None),)'])
    assert cfg.train.steps == 7 and isinstance(cfg.train.steps, int)
    assert cfg.optim.lr == 0.5
    assert cfg.model.dropout == 0.0 and isinstance(cfg.model.dropout, float)
    assert cfg.model.class_conditional is False
    assert cfg.data.name == 'tiny_shakespeare'
    assert cfg.mesh.rules == (('embed', None),)


@pytest.mark.parametrize('override, fragment', [
    ('train.stpes=3', 'unknown config key "train.stpes"'),
    ('trian.steps=3', 'unknown config key "trian"'),
    ('train.steps=three', 'not a valid int'),
    ('model.class_conditional=maybe', 'not a valid bool'),
    ('train.steps', 'has no "="'),
])
def test_bad_overrides_name_what_to_change(override, fragment):
    with pytest.raises(UserError, match=fragment):
        config_lib.load_config(DEMO, [override])


def test_missing_config_file():
    with pytest.raises(UserError, match='is neither a file nor a shipped config'):
        config_lib.load_config('experiments/configs/nope.py')


@pytest.mark.parametrize('key, value, fragment', [
    ('train.steps', 0, 'train.steps must be positive'),
    ('train.batch_size', -4, 'train.batch_size must be positive'),
    ('train.eval_every', -1, 'train.eval_every must be >= 0'),
    # these crashed after the whole run, or deleted every checkpoint
    ('sample.num', 0, 'sample.num must be positive'),
    ('eval.max_examples', -1, 'eval.max_examples must be >= 0'),
    ('train.keep_checkpoints', 0, 'train.keep_checkpoints must be at least 1'),
])
def test_validate_common(key, value, fragment):
    cfg = config_lib.load_config(DEMO)
    config_lib.set_value(cfg, key, value)
    with pytest.raises(UserError, match=fragment):
        config_lib.validate_common(cfg)


def test_set_value_takes_the_entrys_type_or_refuses():
    cfg = config_lib.load_config(DEMO)
    config_lib.set_value(cfg, 'optim.lr', 1)           # an int where a float is
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)
    config_lib.set_value(cfg, 'mesh.rules', [('embed', None)])
    assert cfg.mesh.rules == (('embed', None),)
    with pytest.raises(UserError, match='"train.steps" holds int values like'):
        config_lib.set_value(cfg, 'train.steps', '7')
    with pytest.raises(UserError, match='unknown config key "optim.lrr"'):
        config_lib.set_value(cfg, 'optim.lrr', 1.0)


def test_config_json_round_trip():
    cfg = config_lib.load_config(DEMO)
    again = config_lib.from_json(config_lib.to_json(cfg))
    assert again.to_dict() == config_lib.from_json(config_lib.to_json(again)).to_dict()
    assert again.model.num_layers == cfg.model.num_layers


@pytest.mark.parametrize('sizes, devices, expected', [
    ({'data': -1, 'fsdp': 1, 'tensor': 1}, 8, (8, 1, 1)),
    ({'data': 2, 'fsdp': -1, 'tensor': 2}, 8, (2, 2, 2)),
    ({'data': 1, 'fsdp': 1, 'tensor': 1}, 1, (1, 1, 1)),
])
def test_mesh_shape_fills_minus_one(sizes, devices, expected):
    assert mesh_shape(sizes, devices) == expected


@pytest.mark.parametrize('sizes, fragment', [
    ({'data': 3, 'fsdp': -1, 'tensor': 1}, 'does not divide'),
    ({'data': 2, 'fsdp': 2, 'tensor': 1}, 'make --config.mesh'),
    ({'data': -1, 'fsdp': -1, 'tensor': 1}, 'at most one -1'),
])
def test_bad_mesh_shapes(sizes, fragment):
    with pytest.raises(UserError, match=fragment):
        mesh_shape(sizes, 8)


@pytest.mark.parametrize('text, fragment', [
    ('def get_config(:\n    pass\n', 'has a syntax error at line 1'),
    ('def get_config():\n    c = 1\n', 'returned nothing'),
])
def test_broken_config_files_are_one_sentence(tmp_path, text, fragment):
    path = tmp_path / 'broken.py'
    path.write_text(text)
    with pytest.raises(UserError, match=fragment):
        config_lib.load_config(str(path))


def test_compilation_cache_is_on_for_accelerators_and_where_asked():
    from dul_jax import runtime
    home = os.path.expanduser('~/.cache/dul_jax/jax_cache')
    assert runtime.compilation_cache_dir('auto', 'tpu') == home
    assert runtime.compilation_cache_dir('auto', 'gpu') == home
    assert runtime.compilation_cache_dir('auto', 'cpu') == ''
    assert runtime.compilation_cache_dir('', 'tpu') == ''
    assert runtime.compilation_cache_dir('gs://b/cache', 'cpu') == 'gs://b/cache'
    assert runtime.compilation_cache_dir('~/c', 'cpu') == os.path.expanduser('~/c')


@pytest.mark.integration
def test_runtime_start_fills_the_compilation_cache_it_names(tmp_path):
    # a fresh process without the test session's cache variable: the config's folder is used
    env = {k: v for k, v in os.environ.items() if k != 'JAX_COMPILATION_CACHE_DIR'}
    code = ('import jax, jax.numpy as jnp\n'
            'from dul_jax import config, runtime\n'
            'c = config.base_config()\n'
            f'c.runtime.compilation_cache = {str(tmp_path / "cache")!r}\n'
            'runtime.start(c)\n'
            'jax.jit(lambda x: jnp.sin(x) @ x.T)(jnp.ones((64, 64))).block_until_ready()\n')
    subprocess.run([sys.executable, '-c', code], env=env, check=True, capture_output=True)
    assert any((tmp_path / 'cache').iterdir())


def test_a_run_that_asks_for_an_accelerator_is_refused_on_the_cpu():
    from dul_jax import runtime
    runtime.check_platform('', 'cpu')
    runtime.check_platform('tpu', 'tpu')
    with pytest.raises(UserError, match=r"^runtime.platform=tpu but JAX found cpu devices only; "
                                        r"install JAX for it on this host \(pip install -e "
                                        r"'\.\[tpu\]', or make venv ACCEL=tpu\), or set"):
        runtime.check_platform('tpu', 'cpu')
    with pytest.raises(UserError, match=r"pip install -e '\.\[cuda12\]'"):
        runtime.check_platform('gpu', 'cpu')
    with pytest.raises(UserError, match="is not one of '', cpu, tpu, gpu"):
        runtime.check_platform('cuda', 'cpu')


def test_the_package_list_is_whole_and_shipped_configs_are_found_by_name(tmp_path, monkeypatch):
    import tomllib
    repo = os.path.dirname(os.path.dirname(DEMO)).removesuffix('/experiments')
    with open(os.path.join(repo, 'pyproject.toml'), 'rb') as f:
        listed = set(tomllib.load(f)['tool']['setuptools']['packages'])
    found = {os.path.relpath(folder, repo).replace(os.sep, '.')
             for folder, _, files in os.walk(os.path.join(repo, 'dul_jax'))
             if any(f.endswith('.py') for f in files)}
    assert listed == found | {'dul_jax.configs', 'dul_jax.configs.pod'}
    shipped = config_lib.shipped_configs()
    assert shipped['demo'] == DEMO and 'pod/gpt_1b' in shipped
    assert 'diffusion_defaults' in shipped and '__init__' not in shipped
    monkeypatch.chdir(tmp_path)   # another folder: the checkout's relative path still resolves
    for name in ('demo', 'demo.py', 'experiments/configs/demo.py'):
        assert config_lib.config_file(name) == DEMO
    mine = tmp_path / 'demo.py'   # a file that exists wins over a shipped name
    mine.write_text('')
    assert config_lib.config_file('demo.py') == 'demo.py'
    with pytest.raises(UserError, match=r'config dmeo is neither a file nor a shipped config; '
                                        rf'.* lists all {len(shipped)}\)\.'):
        config_lib.config_file('dmeo')
    table = config_lib.describe_shipped().split('\n')
    rows = {line.split()[0]: line.split()[1:3] for line in table}
    assert set(rows) == set(shipped)
    assert rows['demo'] == ['autoregressive', 'digits']
    assert rows['byol_mnist'] == ['contrastive', 'mnist_test']   # from simclr_mnist.py, loaded
    assert rows['pod/dit_xl2'][0] == 'diffusion'
