"""Several slices (`mesh.slices`): the data axis runs across slices, fsdp and tensor stay inside
one, on fake CPU devices and on two v5e slices compiled ahead of time (the losses on fake slices
are checked against one device in test_sharding.py's mesh table)."""

import os

import jax
import numpy as np
import pytest

from dul_jax import config as config_lib
from dul_jax.errors import UserError
from dul_jax.sharding import mesh, targets
from dul_jax.sharding.inspect import DCN
from dul_jax.train import aot, plan

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GPT = os.path.join(REPO, 'benchmarks', 'configs', 'gpt_125m_bf16.py')
TINY_GPT = ['model.num_layers=2', 'model.embed_dim=64', 'model.num_heads=4', 'model.mlp_dim=128',
            'model.scan_unroll=1', 'data.seq_len=64', 'data.synthetic_vocab=256',
            'train.batch_size=64', 'eval.batch_size=64']


def slice_of(m: jax.sharding.Mesh, devices_by_slice: list) -> np.ndarray:
    """The slice number of each position of the mesh."""
    where = {d: i for i, group in enumerate(devices_by_slice) for d in group}
    return np.vectorize(lambda d: where[d])(m.devices)


def test_fake_devices_split_into_slices_keep_fsdp_and_tensor_inside_one():
    devices = jax.devices()
    assert len(devices) == 8
    cfg = {'slices': 2, 'data': 1, 'fsdp': 2, 'tensor': 2}
    m = mesh.make_mesh(cfg, devices)
    assert dict(m.shape) == {'data': 2, 'fsdp': 2, 'tensor': 2}
    # each data row is one slice, the first four devices the first
    assert slice_of(m, [devices[:4], devices[4:]]).tolist() == [[[0, 0], [0, 0]],
                                                                [[1, 1], [1, 1]]]
    # -1 fills a slice, not the whole machine; then data is slices x that
    assert mesh.mesh_shape({'slices': 2, 'data': -1, 'fsdp': 2, 'tensor': 1}, 8) == (4, 2, 1)
    assert mesh.mesh_shape({'slices': 1, 'data': -1, 'fsdp': 2, 'tensor': 1}, 8) == (4, 2, 1)
    for bad, message in (({'slices': 3, 'data': -1, 'fsdp': 1, 'tensor': 1}, 'equal slices'),
                         ({'slices': 2, 'data': 1, 'fsdp': 8, 'tensor': 1},
                          'there are 4 devices of each of the 2 slices')):
        with pytest.raises(UserError, match=message) as e:
            mesh.mesh_shape(bad, 8)
        assert '\n' not in str(e.value)


@pytest.fixture(scope='module')
def two_slices():
    """The devices of two v5e:4x4 slices (16 chips on 4 hosts each) joined by DCN."""
    pytest.importorskip('libtpu', reason="libtpu is not installed (pip install -e '.[tpu]')")
    target = targets.parse('2xv5e:4x4')
    return target, targets.devices(target)


def test_two_tpu_slices_stack_along_data_and_each_host_loads_its_rows(two_slices):
    target, devices = two_slices
    assert (target.slices, target.num_chips, len(devices)) == (2, 32, 32)
    by_slice = [[d for d in devices if d.slice_index == i] for i in (0, 1)]
    m = mesh.make_mesh({'slices': 2, 'data': 2, 'fsdp': 8, 'tensor': 1}, devices)
    assert dict(m.shape) == {'data': 4, 'fsdp': 8, 'tensor': 1}
    slice_index = slice_of(m, by_slice)
    assert (slice_index[:2] == 0).all() and (slice_index[2:] == 1).all()
    # the 8 hosts each load a contiguous block of the global batch
    assert len({d.process_index for d in devices}) == 8
    mesh.check_process_rows(mesh.batch_sharding(m, mesh.DEFAULT_RULES), 64)
    with pytest.raises(UserError, match=r'form 2 slices but mesh.slices=1; set '
                                        r'--config.mesh.slices=2\.$'):
        mesh.make_mesh({'data': -1, 'fsdp': 1, 'tensor': 1}, devices)


def test_a_run_compiles_for_two_slices_with_the_data_all_reduce_across_them(two_slices):
    target, devices = two_slices
    cfg = config_lib.load_config(GPT, TINY_GPT + ['mesh.data=-1'])
    with pytest.raises(UserError, match=r'2xv5e:4x4 has 2 slice\(s\) but mesh.slices=1; pass '
                                        r'--config.mesh.slices=2\.$'):
        aot.compile_run(cfg, target, devices, with_eval=False)
    cfg = config_lib.load_config(GPT, TINY_GPT + ['mesh.slices=2', 'mesh.data=-1'])
    report = aot.compile_run(cfg, target, devices, with_eval=False)
    assert report.fits and report.target.num_chips == 32
    # each slice's program sums the gradients inside the slice and hands them to the DCN
    # runtime to sum across slices: at most the (replicated, float32) params' bytes per chip
    dcn = report.collectives[DCN]
    assert dcn['count'] > 0 and 0 < dcn['bytes'] <= 1.05 * report.memory['params']
    assert f'{DCN} between the 2 slices is not in the estimate' in aot.format_report(report)
    # plan lays out meshes inside one slice, and its best line names the slices
    found = plan.plan(cfg, target, max_compiles=0, devices=devices)
    assert {c.mesh for c in found} >= {(16, 1, 1), (1, 16, 1)}
    assert all(c.overrides['mesh.slices'] == 2 for c in found)


def test_slice_target_names():
    assert targets.parse('2xv5e:16x16').num_chips == 512
    assert targets.parse('v5e:16x16').slices == 1
    with pytest.raises(UserError, match='h100:16 for two nodes'):
        targets.parse('2xh100:8')
