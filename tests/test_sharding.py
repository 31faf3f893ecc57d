"""Sharded training on 8 simulated CPU devices: every parallelism gives the same losses, FSDP
really splits the state, checkpoints move between meshes, and inspect sees the collectives."""

import json
import os
import socket
import threading
import time

import jax
import numpy as np
import pytest
from conftest import free_port, start_cli

from dul_jax import config as config_lib
from dul_jax import data
from dul_jax.sharding import rendezvous
from dul_jax.sharding.inspect import bytes_per_device, collectives, compiled_train_step, total_bytes
from dul_jax.train.checkpoint import Checkpointer
from dul_jax.train.setup import prepare

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(REPO, 'experiments', 'configs', 'demo.py')
STEPS = 5
# 8 heads and an MLP of 128 so that tensor=8 divides both; dropout on, so that the per-step
# keys must also agree across meshes.
MODEL = ['model.num_layers=1', 'model.num_heads=8', 'model.embed_dim=64', 'model.mlp_dim=128',
         'model.dropout=0.1', 'train.batch_size=16', 'optim.warmup_steps=2', 'optim.ema_decay=0.9']
MESHES = {
    'data=8': {'mesh.data': 8},
    'fsdp=8': {'mesh.data': 1, 'mesh.fsdp': 8},
    'tensor=8': {'mesh.data': 1, 'mesh.tensor': 8},
    'data=2,fsdp=2,tensor=2': {'mesh.data': 2, 'mesh.fsdp': 2, 'mesh.tensor': 2},
    # two slices of 4: data across the slices (DCN), fsdp inside each
    'slices=2,data=2,fsdp=2': {'mesh.slices': 2, 'mesh.data': 2, 'mesh.fsdp': 2},
}
# pmap draws dropout noise per device for its sub-batch, so it can only match without dropout
PMAP = {'mesh.data': 8, 'parallelism': 'pmap', 'model.dropout': 0.0}


def make_cfg(tfds_dir, **overrides):
    items = MODEL + [f'data.tfds_dir={tfds_dir}'] + [f'{k}={v}' for k, v in overrides.items()]
    return config_lib.load_config(DEMO, items)


@pytest.fixture(scope='module')
def batches(tfds_dir):
    it = data.train_iterator(make_cfg(tfds_dir).data, 16, seed=0)
    return [next(it) for _ in range(STEPS)]


def run_steps(setup, batches):
    """Losses of STEPS train steps from seed 0, and the final state (in checkpoint form)."""
    with setup.context():
        state = setup.to_step_form(setup.init_state(0))
        step = setup.train_step()
        losses = []
        for batch in batches:
            state, metrics = step(state, setup.put_train_batch(batch))
            losses.append(float(metrics['loss']))
    return np.array(losses), setup.from_step_form(state)


@pytest.fixture(scope='module')
def reference(tfds_dir, batches):
    setup = prepare(make_cfg(tfds_dir, **{'mesh.data': 1}), devices=jax.devices()[:1])
    return run_steps(setup, batches)


@pytest.mark.parametrize('name', list(MESHES))
@pytest.mark.integration
def test_every_parallelism_gives_the_single_device_losses(name, tfds_dir, batches, reference):
    setup = prepare(make_cfg(tfds_dir, **MESHES[name]))
    losses, _ = run_steps(setup, batches)
    np.testing.assert_allclose(losses, reference[0], rtol=1e-5)
    assert losses[-1] < losses[0]


@pytest.mark.parametrize('accum', [1, 2])
@pytest.mark.integration
def test_pmap_gives_the_single_device_losses(accum, tfds_dir, batches):
    # accum 2: each device's gradient averaged over its microbatches and the devices
    one = prepare(make_cfg(tfds_dir, **{'mesh.data': 1, 'model.dropout': 0.0,
                                        'train.grad_accum': accum}), devices=jax.devices()[:1])
    expected, expected_state = run_steps(one, batches)
    losses, state = run_steps(prepare(make_cfg(tfds_dir, **PMAP, **{'train.grad_accum': accum})),
                              batches)
    np.testing.assert_allclose(losses, expected, rtol=1e-5)
    # the state is a replicated array like the jit path's, so checkpoints go either way
    kernel = state.params['stack']['blocks']['mlp']['fc']['kernel']
    assert kernel.sharding.is_fully_replicated and kernel.sharding.mesh.devices.size == 8
    np.testing.assert_allclose(jax.device_get(kernel), jax.device_get(
        expected_state.params['stack']['blocks']['mlp']['fc']['kernel']), rtol=1e-4, atol=1e-6)


@pytest.mark.integration
def test_fsdp_splits_params_and_optimizer_state_eightfold(tfds_dir, batches):
    setup = prepare(make_cfg(tfds_dir, **MESHES['fsdp=8']))
    _, state = run_steps(setup, batches[:1])
    for tree in (state.params, state.opt_state):
        replicated = sum(x.nbytes for x in jax.tree.leaves(tree) if x.sharding.is_fully_replicated)
        # only small leaves without an `embed` axis (attention biases, step counts) stay whole
        assert replicated < 0.02 * total_bytes(tree)
        assert bytes_per_device(tree) <= total_bytes(tree) / 8 + replicated
    kernel = state.params['stack']['blocks']['mlp']['fc']['kernel']
    assert kernel.sharding.spec == jax.sharding.PartitionSpec(None, 'fsdp', 'tensor')
    assert kernel.addressable_shards[0].data.shape == (1, 8, 128)


@pytest.mark.integration
def test_checkpoint_moves_between_meshes_bit_identically(tmp_path, tfds_dir, batches):
    saved_setup = prepare(make_cfg(tfds_dir, **MESHES['data=2,fsdp=2,tensor=2']))
    _, state = run_steps(saved_setup, batches[:2])
    ckpt = Checkpointer(str(tmp_path / 'ckpt'), async_save=False)
    ckpt.save(2, state)
    ckpt.wait()
    expected = jax.device_get(state)
    for overrides, devices in (({'mesh.data': 8}, None), ({'mesh.data': 1}, jax.devices()[:1])):
        setup = prepare(make_cfg(tfds_dir, **overrides), devices=devices)
        restored = ckpt.restore(setup.abstract_state())
        for got, want in zip(jax.tree.leaves(jax.device_get(restored)), jax.tree.leaves(expected)):
            np.testing.assert_array_equal(got, want)
        leaf = restored.params['stack']['blocks']['mlp']['fc']['kernel']
        assert leaf.sharding.mesh.devices.size == (8 if devices is None else 1)
        with setup.context():  # and training continues on the new mesh
            _, metrics = setup.train_step()(restored, setup.put_train_batch(batches[2]))
        assert np.isfinite(float(metrics['loss']))
    ckpt.close()


@pytest.mark.integration
def test_inspect_sees_fsdp_gathers_and_data_parallel_all_reduce(tfds_dir):
    # unrolled layers, dropout off: exact byte totals against the parameter bytes
    exact = {'model.dropout': 0.0, 'model.scan_unroll': 1}
    data8 = prepare(make_cfg(tfds_dir, **MESHES['data=8'], **exact))
    found = collectives(compiled_train_step(data8).as_text())
    param_bytes = total_bytes(data8.abstract_state().params)
    assert set(found) == {'all-reduce'}
    assert param_bytes <= found['all-reduce']['bytes'] <= param_bytes + 64  # + scalar metrics
    fsdp8 = prepare(make_cfg(tfds_dir, **MESHES['fsdp=8'], **exact))
    found = collectives(compiled_train_step(fsdp8).as_text())
    # parameters gathered for the forward and again for the backward pass (all but the few
    # small leaves that stay replicated: attention and MLP biases)
    assert 1.7 * param_bytes <= found['all-gather']['bytes'] <= 2.0 * param_bytes
    # gradients reduced: XLA's CPU backend lowers the reduce-scatter to an all-reduce + slice
    reduced = found.get('reduce-scatter', {'bytes': 0})['bytes'] * 8 + found['all-reduce']['bytes']
    assert reduced >= 0.95 * param_bytes


def test_collective_counting_follows_loop_trip_counts():
    hlo = """%body (p: (s32[], f32[4])) -> (s32[], f32[4]) {
  %ar = f32[4]{0} all-reduce(%x), replica_groups={}, to_apply=%add
}
ENTRY %main (a: f32[4]) -> f32[4] {
  %w = (s32[], f32[4]) while(%t), condition=%cond, body=%body, """ + (
        '''backend_config={"known_trip_count":{"n":"3"}}''') + """
  %ag = f32[8,2]{1,0} all-gather(%a), dimensions={0}
}"""
    assert collectives(hlo) == {'all-reduce': {'count': 3, 'bytes': 48},
                                'all-gather': {'count': 1, 'bytes': 64}}


@pytest.mark.integration
def test_two_processes_match_one_process_and_its_checkpoint_restores(tmp_path, tfds_dir):
    common = [f'--config.{o}' for o in MODEL] + [
        f'--config.data.tfds_dir={tfds_dir}', '--config.train.steps=4',
        '--config.train.log_every=1',
        '--config.train.ckpt_every=2', '--config.eval.max_examples=64', '--config.sample.num=8',
        '--config.mesh.data=2', '--config.mesh.fsdp=2', '--config.mesh.tensor=2']

    def launch(workdir, devices, extra=(), process_id=None):
        return start_cli('train', '--config', DEMO, '--workdir', workdir, *common, *extra,
                         XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}')

    two = str(tmp_path / 'two')

    def launch_two(workdir, extra=()):
        port = free_port()
        procs = [launch(workdir, 4, ['--config.distributed.enabled=true',
                                 f'--config.distributed.coordinator=127.0.0.1:{port}',
                                 '--config.distributed.num_processes=2',
                                 f'--config.distributed.process_id={i}', *extra])
                 for i in range(2)]
        outputs = [p.communicate(timeout=600) for p in procs]
        for p, (_, err) in zip(procs, outputs):
            assert p.returncode == 0, err[-3000:]
        return outputs

    launch_two(two)
    one = str(tmp_path / 'one')
    single = launch(one, 8)
    _, err = single.communicate(timeout=600)
    assert single.returncode == 0, err[-3000:]

    def losses(workdir):
        with open(os.path.join(workdir, 'metrics.jsonl')) as f:
            return [r['loss'] for r in map(json.loads, f) if 'loss' in r]
    np.testing.assert_allclose(losses(two), losses(one), rtol=1e-5)
    assert len(losses(two)) == 4
    # the 2-process checkpoint restores in a 1-process run (here: this pytest process)
    setup = prepare(make_cfg(tfds_dir, **{'mesh.data': 8}))
    ckpt = Checkpointer(os.path.join(two, 'checkpoints'), async_save=False)
    state = ckpt.restore(setup.abstract_state())
    ckpt.close()
    assert int(state.step) == 4
    reference = Checkpointer(os.path.join(one, 'checkpoints'), async_save=False)
    expected = reference.restore(setup.abstract_state())
    reference.close()
    # equal up to reduction order: Adam turns float noise in near-zero gradients into ~1e-5
    # differences, a few percent of one step (lr 1e-3); different data would differ by 1e-3
    for got, want in zip(jax.tree.leaves(jax.device_get(state.params)),
                         jax.tree.leaves(jax.device_get(expected.params))):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=5e-5)
    # the 1-process run's newest checkpoint damaged, two processes resume it: both set it
    # aside, agree on step 2 and go on
    ckpts = os.path.join(one, 'checkpoints')
    for root, _, files in os.walk(os.path.join(ckpts, '4', 'state')):
        for name in files:
            if root.endswith(os.sep + 'd'):
                open(os.path.join(root, name), 'wb').close()
    (out0, err0), _ = launch_two(one, ['--config.train.steps=6'])
    assert f'moved it to {ckpts}_corrupt/4' in err0
    assert f'resumed from {ckpts}/2' in out0
    assert sorted(os.listdir(ckpts)) == ['2', '4', '6'] and os.listdir(ckpts + '_corrupt') == ['4']
    assert 'saved by 1 process(es) and is resumed by 2' in err0
    with open(os.path.join(one, 'metrics.jsonl')) as f:   # no step logged twice
        assert [r['step'] for r in map(json.loads, f) if 'loss' in r] == [1, 2, 3, 4, 5, 6]


def _launch_cli(workdir, port, process_id, extra=(), num_processes=2):
    """`dul-jax train` as process `process_id` of `num_processes` on 127.0.0.1:`port`."""
    return start_cli(
        'train', '--config', DEMO, '--workdir', workdir, '--config.distributed.enabled=true',
        f'--config.distributed.coordinator=127.0.0.1:{port}',
        f'--config.distributed.num_processes={num_processes}',
        f'--config.distributed.process_id={process_id}', *extra,
        XLA_FLAGS='--xla_force_host_platform_device_count=1')


@pytest.mark.integration
def test_processes_started_with_different_configs_or_workdirs_are_refused_on_every_process(
        tmp_path):
    port = free_port()
    procs = [_launch_cli(str(tmp_path / 'run'), port, i, [f'--config.train.steps={10 + i}'])
             for i in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 2, err[-3000:]
        assert ('error: the 2 processes were started with different configs (process(es) 1 '
                'differ from process 0); start every process with the same --config') in err
    assert not os.path.exists(tmp_path / 'run' / 'checkpoints')
    # each its own workdir: they would save halves of one checkpoint in two places
    port = free_port()
    procs = [_launch_cli(str(tmp_path / f'run{i}'), port, i) for i in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 2, err[-3000:]
        said = [line for line in err.splitlines() if line.startswith('error:')]
        assert said == [('error: process(es) 1 were given another --workdir than process 0; '
                         'give every process the same --workdir, a folder they all reach.')]
    assert not os.path.exists(tmp_path / 'run0') and not os.path.exists(tmp_path / 'run1')


@pytest.mark.integration
def test_a_process_that_never_arrives_is_named_in_one_sentence_after_the_timeout(tmp_path):
    # process 0 waits for process 1 of 2, and process 1 of another pair for its process 0
    ports = free_port(), free_port()
    alone = [_launch_cli(str(tmp_path / f'run{i}'), ports[i], i,
                         ['--config.distributed.initialization_timeout_s=3']) for i in (0, 1)]
    (_, err0), (_, err1) = (p.communicate(timeout=120) for p in alone)
    assert [p.returncode for p in alone] == [2, 2], err0[-2000:] + err1[-2000:]
    assert (f'joining the other processes (coordinator 127.0.0.1:{ports[0]}, process 0 of 2); '
            'waiting up to 3 s (--config.distributed.initialization_timeout_s)') in err0
    assert 'error: process(es) 1 of 2 did not arrive within 3 s; start them' in err0
    assert (f'error: process 0 (the coordinator, 127.0.0.1:{ports[1]}) did not arrive within '
            '3 s') in err1
    assert 'Traceback' not in err0 + err1 and 'DEADLINE_EXCEEDED' not in err0 + err1


def test_the_roll_call_returns_on_every_process_once_all_have_come(tmp_path):
    port, errors = free_port(), []

    def late(pid, delay):
        time.sleep(delay)
        try:
            rendezvous.roll_call(f'127.0.0.1:{port}', 3, pid, 20)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=late, args=(pid, delay)) for pid, delay in
               ((2, 0.0), (0, 0.5), (1, 1.0))]   # the coordinator neither first nor last
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors and not any(t.is_alive() for t in threads)
    with socket.create_server(('127.0.0.1', port)):   # the port is free again for JAX's service
        pass
    # one id started twice: process 0 names it; the others are told it stopped
    threads = [threading.Thread(target=late, args=(pid, delay)) for pid, delay in
               ((0, 0.0), (1, 0.2), (1, 0.4))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(str(e).split(' (its log')[0].split(';')[0] for e in errors) == [
        f'process 0 (127.0.0.1:{port}) ended the roll call without a start',
        f'process 0 (127.0.0.1:{port}) ended the roll call without a start',
        'two processes were started as process 1 of 3']
