"""Warm start from another run (init_from, init_params) and a profiled run (train.profile_steps)."""

import glob
import os

import jax
import numpy as np
import pytest
from test_train import DEMO, tiny_overrides

from dul_jax import config as config_lib
from dul_jax.errors import UserError
from dul_jax.train import loop
from dul_jax.train.checkpoint import restore_state
from dul_jax.train.setup import prepare
from dul_jax.train.state import eval_params
from dul_jax.train.warm_start import _flat, warm_start


@pytest.mark.integration
def test_warm_start_takes_the_params_named_and_a_profile_is_written(tmp_path, tfds_dir, capsys):
    source = str(tmp_path / 'source')
    base = tiny_overrides(tfds_dir, **{'train.steps': 3, 'optim.ema_decay': 0.9})
    loop.train(config_lib.load_config(DEMO, base), source)
    setup = prepare(config_lib.load_config(DEMO, base))
    trained = _flat(jax.device_get(eval_params(restore_state(
        os.path.join(source, 'checkpoints'), setup.abstract_state()))))

    fresh = setup.init_state(seed=1)
    with setup.context():
        state, count = warm_start(fresh, source)
    assert count == len(trained)
    for name, value in _flat(jax.device_get(state.params)).items():
        np.testing.assert_array_equal(value, trained[name])     # the source's EMA params
    assert jax.tree.structure(state.ema_params) == jax.tree.structure(state.params)
    assert int(state.step) == 0

    # a subset by name: the rest keeps this run's own initialisation
    with setup.context():
        state, count = warm_start(fresh, os.path.join(source, 'checkpoints', '3'), 'embed')
    before, after = _flat(jax.device_get(fresh.params)), _flat(jax.device_get(state.params))
    taken = [n for n in after if 'embed' in n]
    assert 0 < count == len(taken) < len(after)
    for name in after:
        expected = trained[name] if name in taken else before[name]
        np.testing.assert_array_equal(after[name], expected)

    with pytest.raises(UserError, match='matches none of this model'):
        warm_start(fresh, source, 'no_such_param')
    with pytest.raises(UserError, match='neither a workdir with checkpoints'):
        warm_start(fresh, str(tmp_path))

    # the trainer: warm start logged, steps 2-3 traced into tensorboard/plugins/profile
    target = str(tmp_path / 'target')
    cfg = config_lib.load_config(DEMO, base + [f'init_from={source}', 'train.profile_steps=2',
                                               'train.profile_start=2'])
    loop.train(cfg, target)
    out = capsys.readouterr().out
    assert f'warm start: {len(trained)} param arrays from {source}' in out
    assert 'profiled steps 2-3' in out
    assert glob.glob(os.path.join(target, 'tensorboard', 'plugins', 'profile', '*', '*.xplane.pb'))


def test_init_params_without_init_from_is_refused(tfds_dir):
    cfg = config_lib.load_config(DEMO, tiny_overrides(tfds_dir, init_params='embed'))
    with pytest.raises(UserError, match='init_from is empty'):
        prepare(cfg)
