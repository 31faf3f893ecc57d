"""GAN family: the losses and penalties against hand-computed values, spectral norm against the
SVD, one two-player step against a hand-written reference (each player updated by its own
optimizer, the generator against the updated discriminator), sharding over meshes, bad configs,
and a tiny WGAN-GP + spectral-norm run that resumes bit-identically."""

import json
import math
import pathlib
import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from conftest import quick_compiles

from dul_jax import config as config_lib
from dul_jax.errors import UserError
from dul_jax.losses import gan as gan_losses
from dul_jax.models import gan as gan_models
from dul_jax.tasks.base import StepContext
from dul_jax.train import loop
from dul_jax.train.checkpoint import restore_state
from dul_jax.train.setup import prepare
from dul_jax.train.state import make_train_step, step_rng

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / 'experiments' / 'configs'


@pytest.fixture(scope='module', autouse=True)
def _quick_compiles():
    with quick_compiles():
        yield


def tiny_config(name, tfds_dir=None, **extra):
    c = config_lib.load_config(str(CONFIGS / name))
    settings = {'train.steps': 20, 'train.log_every': 5, 'train.eval_every': 0,
                'train.ckpt_every': 0, 'train.sample_every': 0, **extra}
    if tfds_dir:
        settings['data.tfds_dir'] = tfds_dir
    for key, value in settings.items():
        config_lib.set_value(c, key, value)
    return c


def digits_config(tfds_dir, **extra):
    return tiny_config('gan_digits.py', tfds_dir, **{
        'model.z_dim': 8, 'model.g_channels': 8, 'model.d_channels': 8,
        'train.batch_size': 16, 'optim.ema_decay': 0.0, **extra})


# ---- losses --------------------------------------------------------------------------------

def test_losses_match_their_formulas():
    zero = jnp.zeros(4)
    d_ns = gan_losses.discriminator_loss('non_saturating', zero, zero)
    assert float(d_ns) == pytest.approx(2 * math.log(2), rel=1e-6)
    assert float(gan_losses.generator_loss('non_saturating', zero)) == pytest.approx(math.log(2))
    real, fake = jnp.array([2.0, 0.5]), jnp.array([-3.0, 0.0])
    # hinge: relu(1 - real) = [0, .5], relu(1 + fake) = [0, 1]
    assert float(gan_losses.discriminator_loss('hinge', real, fake)) == pytest.approx(0.75)
    assert float(gan_losses.discriminator_loss('wasserstein', real, fake)) == pytest.approx(-2.75)
    assert float(gan_losses.generator_loss('hinge', fake)) == pytest.approx(1.5)
    with pytest.raises(ValueError):
        gan_losses.generator_loss('least_squares', fake)


def test_gradient_penalty_and_r1_against_hand_computed_values():
    w = jnp.array([3.0, 4.0])              # a linear critic: gradient w everywhere, norm 5
    real, fake = jnp.ones((6, 2)), -jnp.ones((6, 2))

    def penalty(w):
        return gan_losses.gradient_penalty(lambda x: x @ w, real, fake, jax.random.key(0))
    assert float(penalty(w)) == pytest.approx(16.0, rel=1e-6)        # (5 - 1)^2
    # the double backprop: d/dw (|w| - 1)^2 = 2 (|w| - 1) w / |w|
    np.testing.assert_allclose(jax.grad(penalty)(w), 2 * 4 * w / 5, rtol=1e-5)
    # a quadratic critic's gradient is x_hat itself: with real == fake it is the real point
    x = jnp.array([[0.6, 0.8], [3.0, 0.0]])
    quad = gan_losses.gradient_penalty(lambda x: 0.5 * jnp.sum(x ** 2, -1), x, x,
                                       jax.random.key(1))
    assert float(quad) == pytest.approx((0.0 + 4.0) / 2, rel=1e-5)
    # at x_hat = real + a (fake - real) = (1 - 2a) (1, 1) the quadratic's gradient norm is
    # |1 - 2a| sqrt(2), with the penalty's own draws of a
    between = gan_losses.gradient_penalty(lambda x: 0.5 * jnp.sum(x ** 2, -1), real, fake,
                                          jax.random.key(2))
    a = np.asarray(jax.random.uniform(jax.random.key(2), (6, 1)))[:, 0]
    expected = np.mean((np.abs(1 - 2 * a) * math.sqrt(2) - 1) ** 2)
    assert float(between) == pytest.approx(expected, rel=1e-5)
    assert float(gan_losses.r1_penalty(lambda x: x @ w, real)) == pytest.approx(25.0)


def test_spectral_norm_estimate_converges_to_the_largest_singular_value():
    class Normalized(nn.Module):
        @nn.compact
        def __call__(self, kernel, update):
            return gan_models.spectral_normalize(self, kernel, update)

    kernel = jax.random.normal(jax.random.key(0), (3, 3, 4, 6))
    variables = Normalized().init(jax.random.key(1), kernel, False)
    step = jax.jit(lambda v: Normalized().apply(v, kernel, True, mutable=['spectral']))
    for _ in range(40):
        normalized, state = step(variables)
        variables = {'spectral': state['spectral']}
    top = np.linalg.svd(np.asarray(kernel).reshape(-1, 6), compute_uv=False)[0]
    sigma = float(np.asarray(kernel).ravel()[0] / np.asarray(normalized).ravel()[0])
    assert sigma == pytest.approx(top, rel=1e-4)
    assert np.linalg.svd(np.asarray(normalized).reshape(-1, 6), compute_uv=False)[0] == \
        pytest.approx(1.0, rel=1e-4)
    # without update the vector stays: the same call gives the same estimate
    again = Normalized().apply(variables, kernel, False)
    np.testing.assert_allclose(again, normalized, rtol=1e-6)


# ---- the two-player step -------------------------------------------------------------------

def toy_config(**extra):
    return tiny_config('gan_grid25.py', **{'model.width': 16, 'model.depth': 2,
                                           'train.batch_size': 32, **extra})


@pytest.mark.integration
def test_one_step_is_each_player_in_turn_with_its_own_optimizer():
    cfg = toy_config(**{'model.class_conditional': True, 'model.d_steps': 2,
                        'optim.groups.discriminator.lr': 1e-3})
    setup = prepare(cfg, devices=jax.devices()[:1])
    task, tx = setup.task, setup.tx
    rows = np.random.default_rng(0)
    batch = {'point': rows.normal(size=(32, 2)).astype(np.float32),
             'label': rows.integers(0, 25, 32).astype(np.int32)}
    with setup.context():
        state = setup.init_state(0)
        new, metrics = jax.jit(make_train_step(task, tx, setup.schedule, 0.0))(state, batch)

    # the reference: two discriminator updates, each on its half of the batch (rows i::2), then
    # the generator's against the updated discriminator
    @jax.jit
    def reference(state, batch):
        rng = step_rng(state)
        params, model_state, opt_state, losses = state.params, state.model_state, {}, {}
        halves = [jax.tree.map(lambda x, i=i: x[i::2], batch) for i in range(2)]
        updates = [('discriminator', halves[0], jax.random.fold_in(jax.random.fold_in(rng, 0), 0)),
                   ('discriminator', halves[1], jax.random.fold_in(jax.random.fold_in(rng, 0), 1)),
                   ('generator', batch, jax.random.fold_in(rng, 1))]
        for group, part, key in updates:
            def loss(p, group=group, params=params, part=part, model_state=model_state, key=key):
                out = task.loss({**params, group: p}, part, key,
                                StepContext(jnp.int32(0), model_state, group))
                return out.loss, (out.metrics, out.model_state)
            (value, (_, model_state)), grads = jax.value_and_grad(loss, has_aux=True)(
                params[group])
            losses.setdefault(group, []).append(value)
            change, opt_state[group] = tx[group].update(
                grads, opt_state.get(group, state.opt_state[group]), params[group])
            params = {**params, group: optax.apply_updates(params[group], change)}
        return params, model_state, opt_state, losses

    with setup.context():
        params, model_state, opt_state, losses = reference(state, batch)
    np.testing.assert_allclose(metrics['loss'], np.mean(losses['discriminator']) +
                               losses['generator'][0], rtol=1e-5)
    for group in params:
        for got, want in zip(jax.tree.leaves(new.params[group]), jax.tree.leaves(params[group])):
            # Adam's first update is about lr * sign(grad): float noise in a near-zero gradient
            # moves a weight by up to ~1e-5, a missed or misrouted update by the lr (>= 1e-4)
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=2e-5)
    for got, want in zip(jax.tree.leaves(new.opt_state), jax.tree.leaves(opt_state)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    counts = {g: {int(x) for x in jax.tree.leaves(new.opt_state[g]) if x.dtype == jnp.int32}
              for g in params}
    assert counts == {'discriminator': {2}, 'generator': {1}}
    # spectral norm's vectors advanced, as the reference's discriminator updates advanced them
    moved = [not np.allclose(a, b) for a, b in zip(jax.tree.leaves(state.model_state),
                                                   jax.tree.leaves(new.model_state))
             if a.size > 1]   # the head's u is a unit 1-vector: it cannot move
    assert moved and all(moved)
    for got, want in zip(jax.tree.leaves(new.model_state), jax.tree.leaves(model_state)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert metrics['discriminator/lr'] == pytest.approx(1e-3)
    assert metrics['generator/lr'] == pytest.approx(1e-4)


@pytest.mark.integration
def test_a_step_on_a_2x2x2_mesh_matches_one_device():
    batch = {'point': np.random.default_rng(2).normal(size=(32, 2)).astype(np.float32),
             'label': np.zeros(32, np.int32)}
    out, host = [], None
    for mesh, devices in (({'data': 1, 'fsdp': 1, 'tensor': 1}, jax.devices()[:1]),
                          ({'data': 2, 'fsdp': 2, 'tensor': 2}, jax.devices())):
        cfg = toy_config(**{'model.d_steps': 2, 'optim.ema_decay': 0.9})
        cfg.mesh.update(mesh)
        setup = prepare(cfg, devices=devices)
        with setup.context():
            # one init, placed in each mesh's shardings (the step donates what it is given)
            host = host or jax.device_get(setup.init_state(0))
            start = host.params
            state, metrics = setup.train_step()(jax.device_put(host, setup.state_shardings),
                                                setup.put_batch(batch))
            update = jax.tree.map(lambda a, b: a - b, jax.device_get(state.params), start)
            # the EMA follows the generator alone: 0.9 start + 0.1 new
            assert set(state.ema_params) == {'generator'}
            ema = jax.tree.map(lambda s, p: 0.9 * s + 0.1 * p, start['generator'],
                               jax.device_get(state.params['generator']))
            for got, want in zip(jax.tree.leaves(state.ema_params), jax.tree.leaves(ema)):
                np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
            out.append(jax.device_get((update, state.model_state, metrics)))
    (update, model_state, metrics), (update_1, model_state_1, metrics_1) = out[1], out[0]
    for key in metrics_1:
        np.testing.assert_allclose(metrics[key], metrics_1[key], rtol=1e-3, atol=1e-5,
                                   err_msg=key)
    for got, want in zip(jax.tree.leaves(model_state), jax.tree.leaves(model_state_1)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    # Adam's first updates are about lr * sign(grad), so a near-zero gradient's float noise can
    # flip single weights; the whole update agrees
    difference = optax.global_norm(jax.tree.map(lambda a, b: a - b, update, update_1))
    assert float(difference) < 0.05 * float(optax.global_norm(update_1))


@pytest.mark.integration
def test_the_pmap_path_keeps_the_replicas_of_both_players_equal():
    cfg = toy_config(**{'model.d_steps': 2, 'model.pack': 2, 'optim.ema_decay': 0.9,
                        'parallelism': 'pmap', 'mesh.data': 8})
    setup = prepare(cfg)
    batch = {'point': np.random.default_rng(3).normal(size=(32, 2)).astype(np.float32),
             'label': np.zeros(32, np.int32)}
    with setup.context():
        state = setup.init_state(0)
        start = jax.device_get(state.params)
        step = setup.train_step()
        for _ in range(2):   # 4 points a device: 2 discriminator updates on one pack each
            state, metrics = step(state, setup.put_batch(batch))
    assert math.isfinite(float(metrics['loss'])) and set(state.ema_params) == {'generator'}
    for tree in (state.params, state.opt_state, state.ema_params, state.model_state):
        for leaf in jax.tree.leaves(tree):   # gradients (and power iterations) averaged
            # each device keeps its own copy of the replicated leaf: all 8 must agree
            copies = [np.asarray(s.data) for s in leaf.addressable_shards]
            assert len(copies) == 8 and leaf.sharding.is_fully_replicated
            for copy in copies[1:]:
                np.testing.assert_allclose(copy, copies[0], rtol=1e-6)
    for group in ('generator', 'discriminator'):
        moved = [np.abs(a - b).max() for a, b in zip(
            jax.tree.leaves(jax.device_get(state.params[group])), jax.tree.leaves(start[group]))]
        assert max(moved) > 1e-5, group


def test_packing_puts_consecutive_examples_side_by_side(tfds_dir):
    task = prepare(toy_config(**{'model.pack': 2}), devices=jax.devices()[:1]).task
    points = jnp.arange(8.0).reshape(4, 2)
    np.testing.assert_array_equal(task._pack(points), [[0, 1, 2, 3], [4, 5, 6, 7]])
    task = prepare(digits_config(tfds_dir, **{'model.pack': 2}), devices=jax.devices()[:1]).task
    images = jnp.arange(4 * 2 * 2 * 3.0).reshape(4, 2, 2, 3)
    packed = task._pack(images)
    assert packed.shape == (2, 2, 2, 6)
    np.testing.assert_array_equal(packed[1, 0, 1], jnp.concatenate([images[2, 0, 1],
                                                                    images[3, 0, 1]]))


@pytest.mark.integration
def test_conv_players_shapes_and_levels(tfds_dir):
    setup = prepare(digits_config(tfds_dir, **{'model.class_conditional': True}),
                    devices=jax.devices()[:1])
    task = setup.task
    with setup.context():
        state = setup.init_state(0)
        images = task.sample_images(state.params, jax.random.key(0), 20)
        logits, _ = jax.jit(lambda params, model_state, images: task._discriminate(
            params, model_state, task._real({'image': images}), task.sample_labels(20),
            update=True))(state.params, state.model_state, images)
    assert images.shape == (20, 8, 8, 1) and images.dtype == jnp.uint8
    assert 0 <= int(images.min()) and int(images.max()) <= 16 and len(np.unique(images)) > 2
    assert logits.shape == (20,) and np.isfinite(np.asarray(logits)).all()


@pytest.mark.parametrize('mesh', [{'data': 2, 'fsdp': 2, 'tensor': 2},
                                  {'data': 1, 'fsdp': 8, 'tensor': 1}])
def test_params_shard_on_the_usual_meshes(mesh, tfds_dir):
    cfg = tiny_config('gan_digits.py', tfds_dir, **{'model.class_conditional': True})
    for axis, size in mesh.items():
        cfg.mesh[axis] = size
    setup = prepare(cfg, devices=jax.devices()[:math.prod(mesh.values())])
    for group in ('generator', 'discriminator'):
        specs = [s.spec for s in jax.tree.leaves(setup.state_shardings.params[group])]
        assert any(any(axis is not None for axis in spec) for spec in specs)


@pytest.mark.parametrize('overrides, fragment', [
    ({'model.arch': 'mlp'}, 'generates points'),
    ({'model.loss': 'wasserstein', 'model.spectral_norm': False}, 'needs a Lipschitz critic'),
    ({'model.loss': 'least_squares'}, 'model.loss must be one of'),
    ({'optim.groups.generator.lr': 0.0}, 'optim.groups.generator.lr must be positive'),
    ({'model.d_steps': 3}, 'cannot be split into the 3 discriminator updates'),
    ({'optim.groups': {'critic': {'lr': 1.0}}}, 'names no parameter group'),
    ({'optim.groups': {'generator': {'momentum': 0.9}}}, 'is not an optim setting'),
    ({'model.pack': 3}, 'batch shards x groups of 3 examples'),
    ({'model.pack': 2, 'model.class_conditional': True}, 'packs examples of different classes'),
])
def test_bad_configs_are_one_sentence_user_errors(overrides, fragment, tfds_dir):
    cfg = digits_config(tfds_dir)
    for key, value in overrides.items():   # a dict replaces a whole section (new keys)
        if isinstance(value, dict):
            cfg.optim.groups = ml_collections.ConfigDict(value)
        else:
            config_lib.set_value(cfg, key, value)
    with pytest.raises(UserError, match=fragment) as error:
        prepare(cfg)
    assert str(error.value).count('. ') == 0


# ---- a tiny run on the 2-D toy ---------------------------------------------------------------

@pytest.mark.integration
def test_tiny_packed_wgan_gp_run_resumes_bit_identically(tmp_path):
    cfg = toy_config(**{
        'model.loss': 'wasserstein', 'model.gradient_penalty': 10.0, 'model.r1': 1.0,
        'model.spectral_norm': True, 'model.d_steps': 2, 'model.pack': 2,
        'train.ckpt_every': 10,
        'optim.ema_decay': 0.9, 'eval.modes.num': 500, 'sample.num': 200})
    final = loop.train(cfg, str(tmp_path))
    assert set(final) == {'modes', 'high_quality'} and 0 <= final['high_quality'] <= 1
    assert (tmp_path / 'samples' / 'step_000020.png').is_file()
    rows = [json.loads(line) for line in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
    trained = [r for r in rows if 'discriminator/gradient_penalty' in r]
    assert trained and all(math.isfinite(r['discriminator/r1']) for r in trained)
    setup = prepare(cfg)
    abstract = setup.abstract_state()
    whole = restore_state(tmp_path / 'checkpoints', abstract)
    shutil.rmtree(tmp_path / 'checkpoints' / '20')
    assert loop.train(cfg, str(tmp_path)) == final
    resumed = restore_state(tmp_path / 'checkpoints', abstract)
    for a, b in zip(jax.tree.leaves(whole), jax.tree.leaves(resumed)):
        np.testing.assert_array_equal(a, b)
    assert jax.tree.leaves(whole.model_state)   # the spectral-norm vectors were checkpointed
    assert set(whole.ema_params) == {'generator'}   # the discriminator is not averaged
    # packs of 2 points: the discriminator's first layer takes 4 inputs
    assert whole.params['discriminator']['dense_0']['kernel'].shape[0] == 4
