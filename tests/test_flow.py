"""Flow family: every bijector and whole flow inverts and its log-determinant is the autodiff
Jacobian's, the dequantizer's density is its change of variables, ActNorm's data-dependent init
whitens its first batch, an identity flow's bits/dim match the closed form, sharding over meshes,
bad configs, and a tiny run end to end that does not redo the data init on resume."""

import json
import math
import pathlib
import re
import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import quick_compiles

from dul_jax import config as config_lib
from dul_jax import data
from dul_jax.errors import UserError
from dul_jax.models import bijectors as bj
from dul_jax.models.flows import Dequantizer, MultiScaleFlow
from dul_jax.tasks.flow import FlowTask
from dul_jax.train import loop
from dul_jax.train.setup import prepare

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / 'experiments' / 'configs'


@pytest.fixture(scope='module', autouse=True)
def _quick_compiles():
    with quick_compiles():
        yield


def tiny_config(tfds_dir, **extra):
    """Glow of a few thousand parameters on 8x8 digits (17 levels), variational dequantization."""
    c = config_lib.load_config(str(CONFIGS / 'flow_digits.py'))
    settings = {
        'data.tfds_dir': tfds_dir, 'model.steps': 1, 'model.hidden': 8, 'model.blocks': 0,
        'model.dequantizer_steps': 1, 'model.dequantizer_hidden': 8, 'train.batch_size': 16,
        'train.steps': 40, 'train.log_every': 10, 'train.eval_every': 0, 'train.ckpt_every': 0,
        'train.sample_every': 0, 'eval.batch_size': 32, 'eval.max_examples': 64,
        'eval.iwae.k': 8, 'eval.iwae.chunk': 4, 'eval.iwae.batch_size': 16,
        'eval.iwae.examples': 32, 'sample.num': 4, 'optim.warmup_steps': 5, 'optim.lr': 3e-3,
        **extra}
    for key, value in settings.items():
        config_lib.set_value(c, key, value)
    return c


def _perturbed(params, scale=0.1):
    """Params moved off their (often identity) init, so every part of a layer matters (the
    noise drawn by numpy: no op-by-op compiles)."""
    rng = np.random.default_rng(7)
    return jax.tree.map(lambda p: jnp.asarray(p + scale * rng.normal(size=p.shape), p.dtype),
                        nn.meta.unbox(params))


def _init(module, *args):
    """module.init(key 1, *args), in one jit rather than op by op."""
    return jax.jit(module.init)(jax.random.key(1), *args)


def _check_bijection(module, x, params):
    """inverse(forward(x)) == x, log|det| == slogdet of the Jacobian, and the reverse call's
    log|det| is minus the forward's."""
    @jax.jit
    def run(p, x):
        y, ldj = module.apply({'params': p}, x)
        x_back, ldj_back = module.apply({'params': p}, y, reverse=True)
        jac = jax.jacfwd(lambda v: module.apply({'params': p}, v.reshape(x[:1].shape))[0]
                         .reshape(-1))(x[:1].reshape(-1))
        return x_back, ldj, ldj_back, jnp.linalg.slogdet(jac)
    x_back, ldj, ldj_back, (sign, log_abs_det) = run(params, x)
    np.testing.assert_allclose(x_back, x, atol=1e-4)
    assert float(sign) != 0
    np.testing.assert_allclose(ldj[0], log_abs_det, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(ldj_back, -ldj, rtol=1e-5, atol=1e-5)


LAYERS = {
    'logit': bj.Logit(0.05),
    'actnorm': bj.ActNorm(),
    'invertible_1x1': bj.InvertibleConv1x1(seed=3),
    'checkerboard_tanh': bj.AffineCoupling('checkerboard', 1, 4, 0, 'tanh'),
    'channel_sigmoid': bj.AffineCoupling('channel', 1, 4, 0, 'sigmoid'),
}


@pytest.mark.parametrize('name', LAYERS)
def test_every_layer_inverts_and_its_log_det_is_the_jacobians(name):
    x = jax.random.uniform(jax.random.key(0), (3, 4, 4, 2), minval=0.05, maxval=0.95)
    layer = LAYERS[name]
    _check_bijection(layer, x, _perturbed(_init(layer, x).get('params', {})))


@pytest.mark.parametrize('kind', ['realnvp', 'glow'])
@pytest.mark.integration
def test_whole_flow_inverts_and_its_log_det_is_the_jacobians(kind):
    flow = MultiScaleFlow((4, 4, 2), kind, scales=2, steps=1, hidden=4, blocks=0,
                          scale_fn='tanh' if kind == 'realnvp' else 'sigmoid')
    # actnorms initialised on a batch of 32 (on 2, at 1x1 after two squeezes, they blow up)
    x = jax.random.uniform(jax.random.key(0), (32, 4, 4, 2), minval=0.01, maxval=0.99)
    params = _perturbed(_init(flow, x)['params'])
    _check_bijection(flow, x[:2], params)
    # squeeze is its own inverse's inverse, and moves values without changing them
    np.testing.assert_array_equal(bj.unsqueeze(bj.squeeze(x)), x)
    np.testing.assert_array_equal(np.sort(bj.squeeze(x).ravel()), np.sort(x.ravel()))


@pytest.mark.integration
def test_dequantizer_log_det_is_the_jacobians():
    deq = Dequantizer(steps=2, hidden=4, blocks=0)
    image = jax.random.uniform(jax.random.key(0), (2, 4, 4, 1), minval=-1, maxval=1)
    eps = jax.random.normal(jax.random.key(1), image.shape)
    params = _perturbed(_init(deq, image, eps)['params'])

    @jax.jit
    def run(params, image, eps):
        u, ldj = deq.apply({'params': params}, image, eps)
        jac = jax.jacfwd(lambda e: deq.apply({'params': params}, image[:1],
                                             e.reshape(1, 4, 4, 1))[0].reshape(-1))(
            eps[:1].reshape(-1))
        return u, ldj, jnp.linalg.slogdet(jac)[1]
    u, ldj, log_abs_det = run(params, image, eps)
    assert bool(jnp.all((u > 0) & (u < 1)))
    np.testing.assert_allclose(ldj[0], log_abs_det, rtol=1e-4, atol=1e-3)


def test_actnorm_init_whitens_the_first_batch_it_sees():
    x = 3.0 + 2.0 * jax.random.normal(jax.random.key(0), (16, 4, 4, 3)) * jnp.arange(1, 4)
    layer = bj.ActNorm()
    y, _ = layer.apply(layer.init(jax.random.key(1), x), x)
    np.testing.assert_allclose(y.mean((0, 1, 2)), 0, atol=1e-5)
    np.testing.assert_allclose(y.std((0, 1, 2)), 1, atol=1e-4)


@pytest.fixture(scope='module')
def glow_setup(tfds_dir):
    setup = prepare(tiny_config(tfds_dir), devices=jax.devices()[:1])
    batch = next(data.eval_batches(setup.cfg.data, 16, max_examples=16))
    batch.pop('mask')
    return setup, batch


@pytest.mark.integration
def test_data_init_whitens_the_first_actnorm_and_changes_nothing_else(glow_setup):
    setup, batch = glow_setup
    state = setup.init_state(0)
    after = setup.data_init(state, batch)
    flat_before = jax.tree_util.tree_leaves_with_path(state.params)
    flat_after = dict(jax.tree_util.tree_leaves_with_path(after.params))
    for path, before in flat_before:
        if 'actnorm' not in jax.tree_util.keystr(path):
            np.testing.assert_array_equal(flat_after[path], before)
    # the first actnorm sees squeeze(logit(x)) of the batch at the bin centres
    flow = after.params['flow']
    first = next(k for k in flow if 'actnorm_bias' in flow[k])
    levels = batch['image'].astype(np.float32)
    h, _ = bj.Logit(setup.cfg.model.logit_alpha).apply({}, (levels + 0.5) / 17)
    y = (bj.squeeze(h) + flow[first]['actnorm_bias']) * jnp.exp(flow[first]['actnorm_log_scale'])
    np.testing.assert_allclose(y.mean((0, 1, 2)), 0, atol=1e-4)
    np.testing.assert_allclose(y.std((0, 1, 2)), 1, atol=1e-3)


@pytest.mark.integration
def test_identity_flow_bits_per_dim_match_the_closed_form(tfds_dir):
    # a RealNVP at init is the identity after its logit (zero output convs), so -log P(l) is the
    # logit's change of variables under a standard normal, plus D log L, at the same noise
    cfg = tiny_config(tfds_dir, **{'model.kind': 'realnvp', 'model.scale_fn': 'tanh',
                                   'model.dequantization': 'uniform', 'model.logit_alpha': 0.05})
    task = FlowTask(cfg, data.describe(cfg.data))
    batch = next(data.eval_batches(cfg.data, 8, max_examples=8))
    params = nn.meta.unbox(task.init(jax.random.key(0), batch))
    rng = jax.random.key(5)
    got = task.eval_metrics(params, {'image': batch['image']}, rng)
    u = np.asarray(jax.random.uniform(rng, batch['image'].shape), np.float64)
    x = (batch['image'] + u) / 17
    p = 0.05 + 0.9 * x
    y = np.log(p) - np.log1p(-p)
    per_dim = 0.5 * y ** 2 + 0.5 * math.log(2 * math.pi) - (math.log(0.9) - np.log(p)
                                                            - np.log1p(-p)) + math.log(17)
    nats = per_dim.reshape(8, -1).sum(-1)
    np.testing.assert_allclose(got['nats_per_image'], nats, rtol=1e-5)
    np.testing.assert_allclose(got['bits_per_dim'], nats / (64 * math.log(2)), rtol=1e-5)
    np.testing.assert_array_equal(got['dequantization'], 0)


@pytest.mark.parametrize('overrides, fragment', [
    ({'model.kind': 'maf'}, 'model.kind must be'),
    ({'model.dequantization': 'gaussian'}, 'model.dequantization must be'),
    ({'model.scales': 4}, 'do not halve that often'),
    ({'model.logit_alpha': 0.5}, 'model.logit_alpha must be in'),
    ({'model.scale_fn': 'exp'}, 'model.scale_fn must be'),
])
def test_bad_configs_are_one_sentence_user_errors(overrides, fragment, tfds_dir):
    with pytest.raises(UserError, match=re.escape(fragment)):
        prepare(tiny_config(tfds_dir, **overrides))


@pytest.mark.parametrize('mesh', [{'data': 2, 'fsdp': 2, 'tensor': 2},
                                  {'data': 1, 'fsdp': 8, 'tensor': 1}])
def test_params_shard_on_the_usual_meshes(mesh, tfds_dir):
    # the numerics of a sharded step are jit's; what a family owns is that its params' logical
    # axes resolve on every mesh (checked by prepare, before anything compiles)
    cfg = tiny_config(tfds_dir)
    for axis, size in mesh.items():
        cfg.mesh[axis] = size
    setup = prepare(cfg, devices=jax.devices()[:math.prod(mesh.values())])
    specs = [s.spec for s in jax.tree.leaves(setup.state_shardings.params)]
    assert any(any(axis is not None for axis in spec) for spec in specs)


@pytest.mark.integration
def test_tiny_run_learns_samples_and_keeps_its_data_init_on_resume(tmp_path, tfds_dir,
                                                                   monkeypatch):
    cfg = tiny_config(tfds_dir, **{'train.sample_every': 40, 'train.ckpt_every': 20})
    calls = []
    data_init = FlowTask.data_init
    monkeypatch.setattr(FlowTask, 'data_init',
                        lambda self, *a: calls.append(1) or data_init(self, *a))
    final = loop.train(cfg, str(tmp_path))
    assert len(calls) == 1
    rows = [json.loads(line) for line in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
    losses = [r['loss'] for r in rows if 'loss' in r and 'eval/loss' not in r]
    assert losses[-1] < losses[0] - 0.1   # nats/dim
    assert final['bits_per_dim'] == pytest.approx(final['nats_per_image'] / (64 * math.log(2)))
    # k = 8 noise draws inside the log tighten the one-draw bound
    assert final['iwae_nats_per_image'] < final['nats_per_image']
    for t in (0.5, 0.7, 1.0):
        assert (tmp_path / 'samples' / f'step_000040_T{t}.png').is_file()
    assert (tmp_path / 'samples' / 'step_000040_reconstructions.png').is_file()
    # killed after the step-20 checkpoint: the rerun restores the actnorm params from it (the
    # init is not run again) and ends exactly where the uninterrupted run did
    shutil.rmtree(tmp_path / 'checkpoints' / '40')
    resumed = loop.train(cfg, str(tmp_path))
    assert {k: v for k, v in resumed.items() if k != 'iwae_seconds'} == \
        {k: v for k, v in final.items() if k != 'iwae_seconds'}
    assert len(calls) == 1
