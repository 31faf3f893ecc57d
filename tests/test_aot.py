"""Ahead-of-time compilation for TPU topologies from this CPU host (`dul-jax compile`, `plan`):
small versions of the families compile for a 16- and a 256-chip slice with libtpu's own
compiler, the per-chip bytes agree with the analytic ones, a run that cannot fit is refused in
one sentence, and the roofline arithmetic holds by hand."""

import dataclasses
import os

import jax
import numpy as np
import pytest

from dul_jax import cli
from dul_jax import config as config_lib
from dul_jax.errors import UserError
from dul_jax.ops import attention
from dul_jax.sharding import mesh, targets
from dul_jax.sharding.inspect import collectives
from dul_jax.train import aot, plan

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO, 'experiments', 'configs')
GPT = os.path.join(REPO, 'benchmarks', 'configs', 'gpt_125m_bf16.py')
TINY_GPT = ['model.num_layers=2', 'model.embed_dim=64', 'model.num_heads=4', 'model.mlp_dim=128',
            'model.scan_unroll=1', 'data.seq_len=64', 'data.synthetic_vocab=256',
            'mesh.data=-1']


@pytest.fixture(scope='module')
def slices():
    """The devices of a 16-chip (4 hosts) and a 256-chip (64 hosts) v5e slice."""
    pytest.importorskip('libtpu', reason="libtpu is not installed (pip install -e '.[tpu]')")
    return {name: targets.devices(targets.parse(name)) for name in ('v5e:4x4', 'v5e:16x16')}


def test_roofline_and_mfu_by_hand():
    chip = targets.CHIPS['v5e']
    line = aot.roofline(chip, flops=1.97e12, bytes_accessed=16.38e9, bytes_sent=1e9)
    assert line.compute_s == pytest.approx(1.97e12 / 197e12)        # 10 ms
    assert line.memory_s == pytest.approx(16.38e9 / 819e9)          # 20 ms
    assert line.collective_s == pytest.approx(1e9 / 200e9)          # 5 ms: 400 GB/s both ways
    assert line.step_s == pytest.approx(0.020) and line.bound == 'memory'
    assert line.serial_s == pytest.approx(0.035)
    # 0.985 TFLOP of model arithmetic per chip in 20 ms on a 197 TFLOP/s chip: 25%
    assert aot.mfu(0.985e12, 0.020, chip) == pytest.approx(0.25)


def test_bytes_sent_follow_each_collectives_group_size():
    hlo = """ENTRY %main (a: f32[1024]) -> f32[1024] {
  %ar = f32[1024]{0} all-reduce(%a), replica_groups={{0,1,2,3},{4,5,6,7}}, to_apply=%add
  %ag = bf16[8,512]{1,0} all-gather(%b), replica_groups=[2,8]<=[16], dimensions={0}
  %rs = f32[256]{0} reduce-scatter(%a), replica_groups={}, dimensions={0}, to_apply=%add
}"""
    found = collectives(hlo, num_devices=16)
    assert found['all-reduce'] == {'count': 1, 'bytes': 4096, 'sent': 2 * 3 / 4 * 4096}
    assert found['all-gather'] == {'count': 1, 'bytes': 8192, 'sent': 7 / 8 * 8192}
    assert found['reduce-scatter'] == {'count': 1, 'bytes': 1024, 'sent': 15 * 1024}


def test_loops_without_a_known_trip_count_count_by_their_condition():
    # what the TPU compiler leaves of a scan over 6 layers: no known_trip_count, a `i < 6`
    hlo = """%cond (p: (s32[], f32[4])) -> pred[] {
  %c = s32[]{:T(128)} constant(6)
  %i = s32[] get-tuple-element(%p), index=0
  ROOT %lt = pred[] compare(%i, %c), direction=LT
}
%body (p: (s32[], f32[4])) -> (s32[], f32[4]) {
  %ag = f32[4]{0} all-gather(%x), replica_groups=[2,2]<=[4], dimensions={0}
}
ENTRY %main (a: f32[4]) -> f32[4] {
  %w = (s32[], f32[4]) while(%t), condition=%cond, body=%body, metadata={op_name="scan"}
}"""
    assert collectives(hlo, num_devices=4) == {
        'all-gather': {'count': 6, 'bytes': 96, 'sent': 48}}


def test_targets_parse_name_the_chip_and_refuse_unknown_ones():
    assert targets.parse('v5e:16x16').num_chips == 256
    assert targets.parse('v5p:4x4x8').num_chips == 128
    assert targets.parse('H100:8').chip.platform == 'gpu'
    assert [targets.for_chips(k, n).name for k, n in
            (('v5e', 256), ('v5e', 8), ('v5p', 128), ('v5p', 4), ('h200', 8))] == \
        ['v5e:16x16', 'v5e:2x4', 'v5p:4x4x8', 'v5p:2x2x1', 'h200:8']
    for bad in ('v9:4x4', 'v5e', 'h100:2x4', 'v5e:0x4'):
        with pytest.raises(UserError, match=r'--topology|KIND') as e:
            targets.parse(bad)
        assert '\n' not in str(e.value)


def tiny(name, overrides=()):
    return config_lib.load_config(os.path.join(CONFIGS, name + '.py'), list(overrides))


FAMILIES = {   # small versions of four families, batch sizes that 256 chips divide
    'autoregressive': ('demo', ['model.num_layers=2', 'model.embed_dim=64']),
    'mae': ('mae_digits', []),
    'dit': ('dit_digits', ['model.num_layers=2', 'model.embed_dim=64']),
    'pixelcnn': ('gated_pixelcnn_digits', ['model.num_layers=2']),
}


@pytest.mark.parametrize('topology', ['v5e:4x4', 'v5e:16x16'])
@pytest.mark.parametrize('family', sorted(FAMILIES))
@pytest.mark.integration
def test_small_families_compile_for_a_tpu_slice_and_bytes_agree(family, topology, slices,
                                                                tfds_dir):
    name, overrides = FAMILIES[family]
    cfg = tiny(name, overrides + [f'data.tfds_dir={tfds_dir}', 'train.batch_size=256',
                                  'eval.batch_size=256', 'mesh.data=-1'])
    target = targets.parse(topology)
    report = aot.compile_run(cfg, target, slices[topology], with_eval=family == 'dit')
    assert report.fits and 0 < report.total_bytes < target.chip.hbm_bytes
    # XLA allocates the state and batch bytes we compute for the step's arguments, plus the
    # padding of small trailing dimensions to the TPU's (8, 128) tiles
    arguments = report.compiled.memory_analysis().argument_size_in_bytes
    assert argument_bytes(report) <= arguments <= 1.5 * argument_bytes(report)
    assert report.xla_flops > 0 and report.roofline.step_s > 0
    if report.model_flops is not None:   # the analytic count is the same order as XLA's
        assert 0.3 < report.model_flops / report.xla_flops < 3
    assert 'all-reduce' in report.collectives   # data parallel: gradients are summed


def argument_bytes(report):
    return sum(v for k, v in report.memory.items() if k not in ('temporaries', 'generated code'))


def test_a_multi_host_slice_keeps_each_hosts_devices_together(slices):
    devices = slices['v5e:4x4']
    assert len({d.process_index for d in devices}) == 4
    m = mesh.make_mesh({'data': -1, 'fsdp': 1, 'tensor': 1}, devices)
    processes = [d.process_index for d in m.devices.flat]
    assert processes == sorted(processes)
    sharding = mesh.batch_sharding(m, mesh.DEFAULT_RULES)
    mesh.check_process_rows(sharding, 64)
    interleaved = jax.sharding.Mesh(
        np.array(sorted(devices, key=lambda d: d.id % 4)).reshape(16, 1, 1), mesh.MESH_AXES,
        axis_types=(jax.sharding.AxisType.Auto,) * 3)
    assert [d.process_index for d in interleaved.devices.flat] != processes
    with pytest.raises(UserError, match='holds batch rows'):
        mesh.check_process_rows(mesh.batch_sharding(interleaved, mesh.DEFAULT_RULES), 64)
    # tensor=8 over hosts of 4 chips: two hosts would load the same rows
    wide = mesh.make_mesh({'data': 2, 'fsdp': 1, 'tensor': 8}, devices)
    with pytest.raises(UserError, match=r'^processes 0 and 1 hold the same batch rows: .* '
                                        r'keep --config.mesh.tensor at most 4\.$'):
        mesh.check_process_rows(mesh.batch_sharding(wide, mesh.DEFAULT_RULES), 64)


def test_kernels_follow_the_compile_targets_platform(slices):
    m = mesh.make_mesh({'data': -1, 'fsdp': 1, 'tensor': 1}, slices['v5e:4x4'])
    assert attention.resolve('auto', np.float32, 64) == 'blocked'   # this host: the CPU
    with jax.set_mesh(m):
        assert attention.resolve('auto', np.float32, 64) == 'reference'


@pytest.mark.integration
def test_compile_refuses_a_run_that_does_not_fit_in_one_sentence(slices, capsys, monkeypatch):
    # a chip of 1 MiB: the tiny GPT compiles as fast as ever, and its temporaries do not fit
    small = dataclasses.replace(targets.CHIPS['v5e'], hbm_bytes=2**20)
    monkeypatch.setitem(targets.CHIPS, 'v5e', small)
    rc = cli.main(['compile', '--config', GPT, '--topology', 'v5e:2x2',
                   *(f'--config.{o}' for o in TINY_GPT), '--config.train.batch_size=64',
                   '--config.eval.batch_size=8'])
    out, err = capsys.readouterr()
    assert rc == 2
    assert 'DOES NOT FIT' in out and 'memory per chip' in out
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: the run needs ')
    assert 'more than its 0.00 GiB; the biggest item is ' in lines[0]


@pytest.mark.parametrize('topology, sentence', [
    ('v5e:2x2', ('error: dul-jax compile compiles the jit path for a topology; '
                 'parallelism="pmap" replicates the state in one process: run it with '
                 '--config.parallelism=jit.')),
    # four hosts: refused when the run is prepared
    ('v5e:4x4', ('error: parallelism="pmap" is pure data parallelism in one process here; use '
                 'the default parallelism="jit" for FSDP, tensor parallelism or several '
                 'processes.'))])
def test_compile_refuses_the_pmap_path_in_one_sentence(topology, sentence, slices, capsys):
    rc = cli.main(['compile', '--config', GPT, '--topology', topology,
                   *(f'--config.{o}' for o in TINY_GPT), '--config.train.batch_size=64',
                   '--config.eval.batch_size=16', '--config.parallelism=pmap'])
    assert rc == 2 and capsys.readouterr().err.strip().splitlines() == [sentence]


def report_with(memory, cfg_overrides, chips=4):
    """A Report of the given per-chip memory, for the remedy's choices."""
    line = aot.Roofline(1.0, 1.0, 1.0)
    return aot.Report(targets.parse(f'v5e:{chips}x1' if chips < 4 else 'v5e:2x2'), memory,
                      sum(memory.values()), 1.0, 1.0, 1.0, {}, line, 1.0), \
        config_lib.load_config(GPT, TINY_GPT + cfg_overrides)


def test_remedy_names_the_biggest_item_and_the_cheapest_lever():
    gib = 2**30
    state = {'params': 6 * gib, 'optimizer state': 12 * gib, 'batch': 0, 'temporaries': gib}
    acts = {'params': gib, 'optimizer state': 2 * gib, 'batch': 0, 'temporaries': 20 * gib}
    cases = [(state, [], ('optimizer state (12.00 GiB): split the state over more chips: '
                          '--config.mesh.fsdp=-1 --config.mesh.data=1')),
             (state, ['mesh.fsdp=-1'], '--config.model.param_dtype=bfloat16'),
             (acts, [], ('temporaries (20.00 GiB): recompute activations in the backward pass: '
                         '--config.model.remat=full')),
             (acts, ['model.remat=full', 'train.batch_size=64'],
              ('halve the examples per chip at a time (now about 16): '
               '--config.train.grad_accum=2'))]
    for memory, overrides, expected in cases:
        report, cfg = report_with(memory, overrides)
        sentence = aot.remedy(report, cfg)
        assert expected in sentence and sentence.endswith('.') and '\n' not in sentence


@pytest.mark.integration
def test_plan_rules_out_a_replicated_state_that_cannot_fit(slices):
    # 3 layers of width 8192: 1.6e9 float32 params, 19 GB of state with Adam's two moments,
    # more than a v5e's 16 GiB unless the state is split
    wide = ['model.num_layers=3', 'model.embed_dim=8192', 'model.num_heads=8',
            'model.mlp_dim=16384', 'model.scan_unroll=1', 'data.seq_len=64',
            'data.synthetic_vocab=256', 'train.batch_size=8', 'eval.batch_size=8']
    target = targets.parse('v5e:2x2')
    found = plan.plan(config_lib.load_config(GPT, wide), target, max_compiles=0,
                      devices=targets.devices(target))
    by_mesh = {}
    for c in found:
        by_mesh.setdefault(c.mesh, c)   # each mesh's first lever
    replicated, split = by_mesh[(4, 1, 1)], by_mesh[(1, 4, 1)]
    assert replicated.note.startswith('ruled out: the state alone')
    assert replicated.state_bytes > target.chip.hbm_bytes
    assert split.state_bytes == pytest.approx(replicated.state_bytes / 4, rel=0.01)
    assert split.note == 'not compiled: --max-compiles reached'
    assert all(c.report is None for c in found)
    # a lever the batch cannot take (4 microbatches of 2 examples over 4 shards) is invalid
    assert any(c.note.startswith('invalid: train.grad_accum=4') for c in found)


@pytest.mark.integration
def test_plan_ranks_the_compiled_candidates_by_estimated_step_time(slices):
    target = targets.parse('v5e:2x2')
    cfg = config_lib.load_config(GPT, TINY_GPT + ['train.batch_size=16', 'eval.batch_size=8'])
    found = plan.plan(cfg, target, max_compiles=2, devices=targets.devices(target))
    compiled = [c for c in found if c.report is not None]
    # the most data-parallel meshes first, each at the cheapest lever, which fits
    assert [c.mesh for c in compiled] == [(4, 1, 1), (2, 2, 1)]
    assert all(c.remat == 'none' and c.grad_accum == 1 and c.report.fits for c in compiled)
    rows = plan.format_plan(found).splitlines()
    times = [float(r.split()[6].split('-')[1]) for r in rows[1:3]]   # without overlap
    assert times == sorted(times)
    best = min(compiled, key=lambda c: c.report.roofline.serial_s)
    assert rows[1].split()[1] == 'x'.join(map(str, best.mesh))
    assert rows[-1] == 'best: ' + ' '.join(f'--config.{k}={v}' for k, v in best.overrides.items())


@pytest.mark.integration
def test_inspect_accepts_synthetic_benchmark_configs(capsys):
    small = TINY_GPT[1:] + ['model.num_layers=1', 'data.seq_len=16', 'train.batch_size=8']
    assert cli.main(['inspect', '--config', GPT, *(f'--config.{o}' for o in small)]) == 0
    assert 'collectives in the compiled step' in capsys.readouterr().out


def test_compile_for_an_h100_node_where_the_cuda_plugin_is_installed():
    pytest.importorskip('jax_plugins.xla_cuda12',
                        reason="the CUDA plugin is not installed (pip install -e '.[cuda12]')")
    cfg = config_lib.load_config(GPT, TINY_GPT + ['train.batch_size=8', 'eval.batch_size=8'])
    report = aot.compile_run(cfg, targets.parse('h100:8'), with_eval=False)
    assert report.fits and report.memory['params'] > 0
    assert report.model_flops > 0   # XLA's GPU path gives no cost analysis; the analytic count


def test_a_missing_toolchain_is_named_in_one_sentence(monkeypatch):
    monkeypatch.setitem(__import__('sys').modules, 'libtpu', None)   # import libtpu fails
    with pytest.raises(UserError, match=r"needs libtpu; install the tpu extra: pip install -e "
                                        r"'\.\[tpu\]'\.$"):
        targets.devices(targets.parse('v5e:2x2'))
    monkeypatch.setitem(__import__('sys').modules, 'jax_plugins.xla_cuda12', None)
    with pytest.raises(UserError, match='needs the CUDA plugin; install the cuda12 extra'):
        targets.devices(targets.parse('h100:8'))


@pytest.mark.integration
def test_remat_keeps_the_step_and_shrinks_the_tpu_temporaries(slices, tmp_path):
    # activation-heavy: 4 layers over 512 positions, so what the backward keeps dominates
    base = ['model.num_layers=4', 'model.embed_dim=128', 'model.num_heads=4',
            'model.mlp_dim=512', 'model.scan_unroll=1', 'data.seq_len=512',
            'data.synthetic_vocab=256', 'train.batch_size=16', 'mesh.data=-1']
    target = targets.parse('v5e:2x2')
    devices = targets.devices(target)
    temporaries = {}
    for remat in ('none', 'full'):
        cfg = config_lib.load_config(GPT, base + [f'model.remat={remat}'])
        report = aot.compile_run(cfg, target, devices, with_eval=False)
        temporaries[remat] = report.memory['temporaries']
        if remat == 'full':   # the serialized step can be written for the target to load
            aot.save_executable(report.compiled, str(tmp_path / 'step.pkl'))
    assert temporaries['full'] < 0.5 * temporaries['none']
    serialized, in_tree, out_tree = __import__('pickle').loads((tmp_path / 'step.pkl').read_bytes())
    assert isinstance(serialized, bytes) and len(serialized) > 1000
    assert in_tree.num_leaves > 0 and out_tree.num_leaves > 0
