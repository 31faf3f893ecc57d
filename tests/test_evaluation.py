"""Evaluation on the mesh (train/evaluation.py): the evaluators' results do not depend on the
number of devices or processes, and eval.max_examples decides which eval examples every use sees.
"""

import json
import os

import jax
import numpy as np
import pytest
from conftest import free_port, save_trained_run, start_cli
from test_vae import tiny_config

from dul_jax import data
from dul_jax.train import loop
from dul_jax.train.checkpoint import restore_state
from dul_jax.train.evaluation import Evaluation, masked_sums, means
from dul_jax.train.setup import prepare

EVALUATORS = {'eval.evaluators': ('bound', 'iwae', 'posterior'), 'model.channels': (),
              'eval.iwae.k': 8, 'eval.iwae.chunk': 4}


def evaluate_everything(cfg, devices, params_from=None):
    """The task's eval metrics and every evaluator's, with the params of seed 0 (or those of
    `params_from`, a state on another mesh), on a `devices`-way data-parallel mesh."""
    cfg = cfg.copy_and_resolve_references()
    cfg.mesh.data = len(devices)
    setup = prepare(cfg, devices=devices)
    state = setup.init_state(0)
    if params_from is not None:
        state = state.replace(params=jax.device_put(
            jax.device_get(params_from.params), setup.state_shardings.params))
    return loop.evaluate_all(setup, state, Evaluation(setup)), state


def test_evaluators_on_eight_devices_give_the_one_device_results(tfds_dir):
    cfg = tiny_config(tfds_dir, **EVALUATORS)
    one, state = evaluate_everything(cfg, jax.devices()[:1])
    eight, _ = evaluate_everything(cfg, jax.devices()[:8], params_from=state)
    assert one.keys() == eight.keys() and one['iwae_examples'] == 32
    for key in one:
        if not key.endswith('_seconds'):
            assert eight[key] == pytest.approx(one[key], rel=1e-5, abs=1e-6), key


def test_eval_max_examples_caps_every_evaluator(tfds_dir):
    # the evaluators ask for 32 (iwae) and 64 (bound) examples; eval.max_examples=20 caps both
    cfg = tiny_config(tfds_dir, **EVALUATORS, **{'eval.max_examples': 20})
    metrics, _ = evaluate_everything(cfg, jax.devices()[:2])
    assert metrics['iwae_examples'] == metrics['bound_examples'] == 20
    cfg = tiny_config(tfds_dir, **EVALUATORS, **{'eval.max_examples': 0})
    metrics, _ = evaluate_everything(cfg, jax.devices()[:2])
    assert metrics['iwae_examples'] == 32 and metrics['bound_examples'] == 64


def test_batches_stop_at_the_examples_used_and_keep_the_mesh_divisible(tfds_dir):
    cfg = tiny_config(tfds_dir, **{'eval.batch_size': 248, 'eval.max_examples': 0})
    cfg.mesh.data = 8
    setup = prepare(cfg, devices=jax.devices()[:8])
    ev = Evaluation(setup)
    with setup.context():
        # 13 examples under eval.batch_size 248 are one batch of 16 (8 devices), not 248
        assert [b['image'].shape[0] for b in ev.batches(limit=13)] == [16]
        batches = list(ev.batches())
    assert [b['image'].shape[0] for b in batches] == [248, 248]
    assert sum(float(np.asarray(b['mask']).sum()) for b in batches) == 297
    assert batches[0]['image'].sharding == setup.batch_sharding


def test_the_mask_weighted_mean_counts_real_examples_only():
    per_example = masked_sums(lambda p, b, r: {'x': b['x'] * p})
    sums = per_example(2.0, {'x': np.array([1.0, 2.0, 3.0, 100.0]),
                             'mask': np.array([1.0, 1.0, 1.0, 0.0])}, None)
    assert means(sums) == ({'x': 4.0}, 3.0)


def test_probe_features_come_back_in_the_splits_stored_order(tfds_dir):
    cfg = tiny_config(tfds_dir, **{'eval.max_examples': 40})
    cfg.mesh.data = 4
    setup = prepare(cfg, devices=jax.devices()[:4])
    ev = Evaluation(setup)
    with setup.context():
        out = ev.gather('labels', lambda p, b, r: {'label': b['label'], 'image': b['image']},
                        setup.init_state(0).params, limit=40)
    # eval.max_examples caps the eval split; the train split a probe fits on stays whole
    assert ev.examples() == ev.examples(split=setup.spec.eval_split) == 40
    assert ev.examples(split=setup.spec.train_split) is None
    assert ev.examples(100, split=setup.spec.train_split) == 100
    stored = next(data.eval_batches(cfg.data, 40, max_examples=40))
    np.testing.assert_array_equal(out['label'], stored['label'])
    np.testing.assert_array_equal(out['image'], stored['image'])


@pytest.mark.integration
def test_two_processes_evaluate_as_one_device_does(tmp_path, tfds_dir):
    cfg = tiny_config(tfds_dir, **EVALUATORS)
    cfg.mesh.data = 1
    setup = prepare(cfg, devices=jax.devices()[:1])
    workdir = str(tmp_path / 'run')
    os.makedirs(workdir)
    save_trained_run(workdir, cfg, setup, data.train_iterator(cfg.data, 16, 0), steps=3)
    state = restore_state(os.path.join(workdir, 'checkpoints'), setup.abstract_state())
    expected = loop.evaluate_all(setup, state, Evaluation(setup))   # here, on one device

    port = free_port()
    procs = [start_cli('eval', '--workdir', workdir, '--config.mesh.data=8',
                       '--config.distributed.enabled=true',
                       f'--config.distributed.coordinator=127.0.0.1:{port}',
                       '--config.distributed.num_processes=2',
                       f'--config.distributed.process_id={i}',
                       XLA_FLAGS='--xla_force_host_platform_device_count=4') for i in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
    with open(os.path.join(workdir, 'eval_step_000003.json')) as f:
        got = json.load(f)
    assert got['iwae_examples'] == 32 and got['max_examples'] == 64
    for key, value in expected.items():
        if not key.endswith('_seconds'):
            assert got[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
