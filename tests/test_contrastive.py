"""Contrastive family: NT-Xent and BYOL's regression against hand-computed values, the global-batch
loss and gradients equal on one device, data=8 and fsdp=8, BYOL's target outside the gradient
and moved by its EMA after the update, bad configs, and a tiny BYOL run through the probes."""

import json
import math
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import quick_compiles

from dul_jax import config as config_lib
from dul_jax.errors import UserError
from dul_jax.losses import contrastive
from dul_jax.tasks.base import StepContext
from dul_jax.train import loop
from dul_jax.train.optim import make_optimizer
from dul_jax.train.setup import prepare
from dul_jax.train.state import step_rng

CONFIG = pathlib.Path(__file__).resolve().parents[1] / 'experiments/configs/contrastive_digits.py'


@pytest.fixture(scope='module', autouse=True)
def _quick_compiles():
    with quick_compiles():
        yield


def tiny_config(tfds_dir, **extra):
    c = config_lib.load_config(str(CONFIG))
    settings = {'model.width': 8, 'model.head_hidden': 32, 'model.head_dim': 16,
                'train.batch_size': 16, 'train.steps': 20, 'train.log_every': 5,
                'train.eval_every': 0, 'train.ckpt_every': 0, 'train.sample_every': 0,
                'data.tfds_dir': tfds_dir, **extra}
    for key, value in settings.items():
        config_lib.set_value(c, key, value)
    return c


def digits_batch(size):
    from sklearn.datasets import load_digits
    x, y = load_digits(return_X_y=True)
    return {'image': x[:size].reshape(size, 8, 8, 1).astype(np.uint8),
            'label': y[:size].astype(np.int32)}


# ---- losses --------------------------------------------------------------------------------

def test_nt_xent_hand_computed_and_reference():
    # Views equal and the two examples orthogonal: each anchor sees its positive at cosine 1 and
    # two negatives at 0, so every loss is -log(e / (e + 2)) at temperature 1.
    e = jnp.eye(2)
    np.testing.assert_allclose(contrastive.nt_xent(e, e, 1.0), np.full(4, np.log1p(2 / np.e)),
                               rtol=1e-6)
    # A loop over anchors, with the paper's denominator (every other embedding, not itself)
    rng = np.random.default_rng(0)
    z1, z2, t = rng.normal(size=(5, 3)), rng.normal(size=(5, 3)), 0.3
    z = np.concatenate([z1, z2])
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    want = []
    for i in range(10):
        sims = np.exp(z @ z[i] / t)
        want.append(-np.log(sims[(i + 5) % 10] / (sims.sum() - sims[i])))
    np.testing.assert_allclose(contrastive.nt_xent(z1, z2, t), want, rtol=1e-5)


def test_byol_regression_and_target_decay():
    p = jnp.array([[1.0, 0.0], [1.0, 0.0], [2.0, 0.0]])
    z = jnp.array([[3.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    np.testing.assert_allclose(contrastive.byol_regression(p, z), [0.0, 2.0, 4.0], atol=1e-6)
    grad = jax.grad(lambda z: contrastive.byol_regression(p, z).sum())(z + 0.5)
    assert not np.any(np.asarray(grad))   # the target is a constant to the loss
    decay = [float(contrastive.target_decay(jnp.array(k), 100, 0.99)) for k in (0, 50, 100, 200)]
    np.testing.assert_allclose(decay, [0.99, 0.995, 1.0, 1.0], rtol=1e-6)


# ---- the global batch on meshes --------------------------------------------------------------

@pytest.mark.integration
def test_loss_and_gradients_on_data_fsdp_and_one_device_are_equal(tfds_dir):
    batch, rng = digits_batch(32), jax.random.key(3)
    results, params = [], None
    for mesh, devices in (({'data': 1, 'fsdp': 1, 'tensor': 1}, jax.devices()[:1]),
                          ({'data': 8, 'fsdp': 1, 'tensor': 1}, jax.devices()),
                          ({'data': 1, 'fsdp': 8, 'tensor': 1}, jax.devices())):
        cfg = tiny_config(tfds_dir, **{'train.batch_size': 32})
        cfg.mesh.update(mesh)
        setup = prepare(cfg, devices=devices)
        task = setup.task
        with setup.context():
            params = params or jax.jit(lambda key, task=task: nn.meta.unbox(
                task.init(key, batch)))(jax.random.key(0))
            placed = jax.device_put(params, setup.state_shardings.params)
            ctx = StepContext(jnp.int32(0), model_state={})
            (value, _), grads = jax.jit(jax.value_and_grad(
                lambda p, b, task=task, ctx=ctx: task.loss(p, b, rng, ctx)[:2], has_aux=True))(
                placed, setup.put_batch(batch))
            results.append(jax.device_get((value, grads)))
    (value_1, grads_1), grad_norm = results[0], float(optax.global_norm(results[0][1]))
    for value, grads in results[1:]:
        np.testing.assert_allclose(value, value_1, rtol=1e-5)
        difference = optax.global_norm(jax.tree.map(lambda a, b: a - b, grads, grads_1))
        assert float(difference) < 1e-4 * grad_norm
    # shard-local negatives (the common bug: 4 examples per device) give another loss
    z = np.asarray(jax.jit(lambda p, images: task._project(p, jnp.concatenate(
        _views(task, task._pixels(images), rng))))(params, batch['image']))
    nt_xent = jax.jit(contrastive.nt_xent, static_argnums=2)
    np.testing.assert_allclose(value_1, nt_xent(z[:32], z[32:], 0.5).mean(), rtol=1e-5)
    local = np.mean([nt_xent(z[i:i + 4], z[32 + i:36 + i], 0.5).mean()
                     for i in range(0, 32, 4)])
    assert abs(local - value_1) > 0.5


def _views(task, x, rng):
    from dul_jax.data import augment
    return augment.two_views(x, rng, task.cfg.model.augment)


@pytest.mark.integration
def test_byol_target_gets_no_gradient_and_follows_the_updated_online_network(tfds_dir):
    cfg = tiny_config(tfds_dir, **{'model.method': 'byol', 'train.steps': 100,
                                   'optim.warmup_steps': 0})   # a real first update
    setup = prepare(cfg, devices=jax.devices()[:1])
    task = setup.task
    with setup.context():
        state = setup.init_state(0)
        batch, rng = setup.put_batch(digits_batch(16)), step_rng(state)
        for name in ('encoder', 'projector'):   # the target starts as a copy
            for a, b in zip(jax.tree.leaves(state.model_state[name]),
                            jax.tree.leaves(state.params[name])):
                np.testing.assert_array_equal(a, b)
        loss, target_grads = jax.jit(jax.value_and_grad(lambda t: task.loss(
            state.params, batch, rng, StepContext(state.step, t)).loss))(state.model_state)
        assert not any(np.any(np.asarray(g)) for g in jax.tree.leaves(target_grads))
        assert 'predictor' in state.params and 'predictor' not in state.model_state

        def by_hand(params, target):   # each view's prediction against the other's target
            views = jnp.concatenate(_views(task, task._pixels(batch['image']), rng))
            p = task.models['predictor'].apply({'params': params['predictor']},
                                               task._project(params, views))
            t = task._project(target, views)
            return jnp.mean(contrastive.byol_regression(p[:16], t[16:]) +
                            contrastive.byol_regression(p[16:], t[:16]))
        np.testing.assert_allclose(loss, jax.jit(by_hand)(state.params, state.model_state),
                                   rtol=1e-5)
        before, target = jax.device_get((state.params, state.model_state))
        new, _ = setup.train_step()(state, batch)
    after = jax.device_get(new.params)
    assert float(optax.global_norm(jax.tree.map(lambda a, b: a - b, after, before))) > 1e-3
    tau = 0.99   # the base rate at step 0
    for got, old, online in zip(jax.tree.leaves(jax.device_get(new.model_state)),
                                jax.tree.leaves(target),
                                jax.tree.leaves({k: after[k] for k in target})):
        np.testing.assert_allclose(got, tau * old + (1 - tau) * online, rtol=1e-6, atol=1e-8)


def test_warm_start_gives_a_target_network_the_loaded_params(monkeypatch):
    from dul_jax.train import state as state_lib
    from dul_jax.train import warm_start
    params = {'encoder': {'kernel': jnp.zeros(3)}, 'predictor': {'kernel': jnp.zeros(2)}}
    state = state_lib.TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=None,
                                 ema_params=None, rng=jnp.zeros(2, jnp.uint32),
                                 model_state={'encoder': {'kernel': jnp.zeros(3)}})
    loaded = {'encoder/kernel': np.ones(3, np.float32), 'predictor/kernel': np.ones(2, np.float32)}
    monkeypatch.setattr(warm_start, 'source_params', lambda source: loaded)
    new, count = warm_start.warm_start(state, 'runs/source', 'encoder')
    assert count == 1
    np.testing.assert_array_equal(new.params['encoder']['kernel'], np.ones(3))
    np.testing.assert_array_equal(new.model_state['encoder']['kernel'], np.ones(3))
    np.testing.assert_array_equal(new.params['predictor']['kernel'], np.zeros(2))


# ---- configs and a tiny run --------------------------------------------------------------------

@pytest.mark.parametrize('overrides, fragment', [
    ({'model.method': 'moco'}, 'model.method must be one of'),
    ({'model.encoder': 'vit', 'model.patch_size': 3}, 'does not tile'),
    ({'model.temperature': 0.0}, 'model.temperature must be positive'),
    ({'train.grad_accum': 2}, 'needs the whole batch in one loss'),
    ({'parallelism': 'pmap'}, 'needs the whole batch in one loss'),
    ({'model.augment.crop_scale': (0.5, 1.5)}, 'model.augment.crop_scale'),
    ({'optim.optimizer': 'lars', 'model.encoder': 'vit', 'model.patch_size': 2},
     'takes one trust ratio per parameter array'),
])
def test_bad_configs_are_one_sentence_user_errors(overrides, fragment, tfds_dir):
    cfg = tiny_config(tfds_dir)
    for key, value in overrides.items():
        config_lib.set_value(cfg, key, value)
    with pytest.raises(UserError, match=fragment) as error:
        prepare(cfg)
    assert str(error.value).count('. ') == 0


@pytest.mark.integration
def test_tiny_byol_vit_run_ends_with_the_probes(tmp_path, tfds_dir):
    cfg = tiny_config(tfds_dir, **{
        'model.method': 'byol', 'model.encoder': 'vit', 'model.patch_size': 2,
        'model.embed_dim': 16, 'model.num_layers': 1, 'model.num_heads': 2, 'model.mlp_dim': 32,
        'train.steps': 4, 'train.eval_every': 4, 'eval.max_examples': 64, 'sample.num': 6})
    final = loop.train(cfg, str(tmp_path))
    # 4 steps of a tiny encoder: well above chance (0.1) is all a working pipeline promises
    assert 0.3 < final['probe_accuracy'] <= 1 and 0.3 < final['knn_accuracy'] <= 1
    rows = [json.loads(line) for line in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
    assert all(math.isfinite(r['loss']) for r in rows if 'loss' in r)
    assert any(-1 <= r.get('eval/view_cosine', -2) <= 1 for r in rows)
    assert (tmp_path / 'samples' / 'step_000004.png').is_file()


def test_lars_trusts_each_kernel_and_leaves_biases_to_momentum_sgd():
    optim = config_lib.base_config().optim
    optim.update(optimizer='lars', lr=0.1, warmup_steps=0, schedule='constant', clip_norm=0.0,
                 weight_decay=0.01, b1=0.9)
    tx, _ = make_optimizer(optim, 10)
    params = {'dense': {'kernel': jnp.full((3, 2), 2.0), 'bias': jnp.ones(2)}}
    grads = {'dense': {'kernel': jnp.full((3, 2), 0.5), 'bias': jnp.full(2, 0.5)}}
    updates, _ = tx.update(grads, tx.init(params), params)
    # kernel: g + wd w = 0.52, scaled by 0.001 |w| / |g + wd w| = 0.001 * 2 / 0.52, times -lr
    np.testing.assert_allclose(updates['dense']['kernel'], -0.1 * 0.001 * 2.0, rtol=1e-5)
    np.testing.assert_allclose(updates['dense']['bias'], -0.1 * 0.5, rtol=1e-6)
    cfg = config_lib.base_config()
    cfg.optim.optimizer = 'sgd'
    with pytest.raises(UserError, match='optim.optimizer must be "adamw" or "lars"'):
        config_lib.validate_common(cfg)
