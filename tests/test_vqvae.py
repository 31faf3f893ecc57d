"""VQ-VAE: the quantiser and its gradients, a tiny training run, sharding over three meshes, the
code export the autoregressive prior trains on, and config errors."""

import json
import math
import pathlib
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import quick_compiles, train_losses

from dul_jax import config as config_lib
from dul_jax import data
from dul_jax.errors import UserError
from dul_jax.losses import vq
from dul_jax.train import loop
from dul_jax.train.setup import prepare

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / 'experiments/configs'


@pytest.fixture(scope='module', autouse=True)
def _quick_compiles():
    with quick_compiles():
        yield


def tiny_config(tfds_dir, **extra):
    """A VQ-VAE of a few thousand parameters on 8x8 digits (a 4x4 grid of 16 codes); widths are
    multiples of 8 so that every mesh below can shard them."""
    c = config_lib.load_config(str(CONFIGS / 'vqvae_digits.py'))
    settings = {
        'data.tfds_dir': tfds_dir, 'model.hidden': 16, 'model.res_channels': 8,
        'model.res_blocks': 1, 'model.code_dim': 8, 'model.num_codes': 16,
        'train.batch_size': 16, 'train.log_every': 10, 'train.eval_every': 0,
        'train.ckpt_every': 0, 'train.sample_every': 0, 'eval.batch_size': 16,
        'eval.max_examples': 16, 'sample.num': 4, 'optim.warmup_steps': 5, 'train.steps': 40,
        'optim.lr': 3e-3, **extra}
    for key, value in settings.items():
        config_lib.set_value(c, key, value)
    return c


@pytest.fixture(scope='module')
def task_and_params(tfds_dir):
    setup = prepare(tiny_config(tfds_dir), devices=jax.devices()[:1])
    task = setup.task
    params = jax.device_get(jax.jit(lambda key: nn.meta.unbox(task.init(
        key, setup.dummy_batch())))(jax.random.key(0)))
    # codes drawn from the encoder's outputs at init, so that many are the nearest to something
    images = next(data.eval_batches(task.cfg.data, 16, max_examples=16))['image']
    z_e = np.asarray(encode(task, params, jnp.asarray(images))[0]).reshape(-1, 8)
    pick = np.random.default_rng(0).choice(len(z_e), 16, replace=False)
    params['codebook'] = z_e[pick]
    return task, params


def encode(task, params, levels):
    """task._encode (z_e and the codebook) in one jit rather than op by op."""
    return jax.jit(task._encode)(params, levels)


# ---- the quantiser ----------------------------------------------------------------------------

def test_quantiser_picks_the_nearest_code():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(3, 5, 4, 6)).astype(np.float32)
    codebook = rng.normal(size=(11, 6)).astype(np.float32)
    brute = ((z[..., None, :] - codebook) ** 2).sum(-1)
    np.testing.assert_allclose(vq.squared_distances(z, codebook), brute, rtol=1e-5, atol=1e-5)
    z_q, indices = vq.quantize(jnp.asarray(z), jnp.asarray(codebook))
    np.testing.assert_array_equal(indices, brute.argmin(-1))
    np.testing.assert_array_equal(z_q, codebook[brute.argmin(-1)])


def test_straight_through_passes_the_gradient_of_z_q_to_z_e():
    rng = np.random.default_rng(1)
    z_e = jnp.asarray(rng.normal(size=(4, 3)), jnp.float32)
    codebook = jnp.asarray(rng.normal(size=(5, 3)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(4, 3)), jnp.float32)
    f = lambda x: jnp.sum(w * jnp.sin(x))

    def through(z_e, codebook):
        return f(vq.straight_through(z_e, vq.quantize(z_e, codebook)[0]))

    z_q = vq.quantize(z_e, codebook)[0]
    np.testing.assert_allclose(through(z_e, codebook), f(z_q), rtol=1e-6)
    g_e, g_codebook = jax.grad(through, argnums=(0, 1))(z_e, codebook)
    np.testing.assert_allclose(g_e, jax.grad(f)(z_q), rtol=1e-6)
    np.testing.assert_array_equal(g_codebook, 0.0)


def test_codebook_loss_trains_the_codebook_and_commitment_the_encoder():
    rng = np.random.default_rng(2)
    z_e = jnp.asarray(rng.normal(size=(6, 4)), jnp.float32)
    codebook = jnp.asarray(rng.normal(size=(5, 4)), jnp.float32)

    def terms(kind):
        def total(z_e, codebook):
            z_q, _ = vq.quantize(z_e, codebook)
            return (vq.codebook_loss(z_e, z_q) if kind == 'codebook'
                    else vq.commitment_loss(z_e, z_q, 0.25)).sum()
        return jax.grad(total, argnums=(0, 1))(z_e, codebook)

    z_q, indices = vq.quantize(z_e, codebook)
    g_e, g_codebook = terms('codebook')
    np.testing.assert_array_equal(g_e, 0.0)
    expected = np.zeros(codebook.shape, np.float32)
    np.add.at(expected, np.asarray(indices), 2 * np.asarray(z_q - z_e))
    np.testing.assert_allclose(g_codebook, expected, rtol=1e-5, atol=1e-6)
    g_e, g_codebook = terms('commitment')
    np.testing.assert_allclose(g_e, 2 * 0.25 * (z_e - z_q), rtol=1e-5)
    np.testing.assert_array_equal(g_codebook, 0.0)


def test_perplexity_counts_the_codes_in_use():
    assert float(vq.perplexity(vq.code_frequencies(jnp.arange(8) % 4, 16))) == pytest.approx(4.0)
    assert float(vq.perplexity(vq.code_frequencies(jnp.zeros(9, jnp.int32), 16))) == \
        pytest.approx(1.0)
    # a weight of 0 leaves an example out
    weighted = vq.code_frequencies(jnp.array([[0, 0], [1, 2]]), 4, jnp.array([[1.0], [0.0]]))
    np.testing.assert_allclose(weighted, [1, 0, 0, 0])


# ---- the task -----------------------------------------------------------------------------

@pytest.mark.integration
def test_tiny_training_run_lowers_the_loss(tmp_path, tfds_dir):
    final = loop.train(tiny_config(tfds_dir), str(tmp_path))
    with open(tmp_path / 'metrics.jsonl') as f:
        rows = [r for r in map(json.loads, f) if 'reconstruction' in r and 'step' in r]
    assert rows[-1]['reconstruction'] < 0.9 * rows[0]['reconstruction']
    assert rows[-1]['loss'] < rows[0]['loss']
    assert 0 < final['bits_per_dim'] < math.log2(17) and 0 < final['mse'] < 0.2
    assert 1 <= final['perplexity'] <= 16
    assert (tmp_path / 'samples' / 'step_000040.png').is_file()


@pytest.mark.integration
def test_sharded_training_agrees_over_meshes(tfds_dir):
    cfg = tiny_config(tfds_dir)
    it = data.train_iterator(cfg.data, cfg.train.batch_size, seed=0)
    batches = [next(it) for _ in range(2)]
    losses, start = {}, None
    # data=8 is the tiny run's mesh; 2x2x2 shards batch, params (fsdp) and widths (tensor) at once
    for mesh in ({'data': 8, 'fsdp': 1, 'tensor': 1}, {'data': 2, 'fsdp': 2, 'tensor': 2}):
        for axis, size in mesh.items():
            cfg.mesh[axis] = size
        setup = prepare(cfg)
        # one init (the tiny run's), placed in each mesh's shardings: a compile, not two; the
        # codebook's running averages (model_state) are sharded and updated on each mesh too
        start = start or jax.device_get(setup.init_state(0))
        state, losses[tuple(mesh.values())] = train_losses(
            setup, jax.device_put(start, setup.state_shardings), batches)
        specs = [x.sharding.spec for x in jax.tree.leaves(state.params)]
        if mesh['fsdp'] == 2:
            assert any('fsdp' in jax.tree.leaves(tuple(s)) for s in specs)
            assert 'fsdp' in jax.tree.leaves(tuple(state.params['codebook'].sharding.spec))
        if mesh['tensor'] == 2:
            assert any('tensor' in jax.tree.leaves(tuple(s)) for s in specs)
    reference = losses[(8, 1, 1)]
    assert all(math.isfinite(v) for v in reference)
    for mesh, trajectory in losses.items():
        np.testing.assert_allclose(trajectory, reference, rtol=1e-5, err_msg=str(mesh))


@pytest.mark.integration
def test_exported_codes_are_the_models_argmin_and_train_the_prior(task_and_params, tmp_path,
                                                                  tfds_dir):
    task, params = task_and_params
    splits = {split: data.eval_batches(task.cfg.data, 256, split=split)
              for split in (task.spec.train_split, task.spec.eval_split)}
    info = task.export_codes(params, splits, str(tmp_path / 'codes'))
    assert info['shape'] == [4, 4, 1] and info['num_levels'] == 16
    assert info['splits'] == {'train': 1500, 'test': 297}
    codes_cfg = config_lib.base_config().data
    codes_cfg.name = f'arrays:{tmp_path / "codes"}'
    spec = data.describe(codes_cfg)
    assert (spec.kind, spec.shape, spec.num_levels, spec.num_classes) == \
        ('image', (4, 4, 1), 16, 10)
    assert (spec.num_train, spec.num_eval) == (1500, 297)
    images = next(data.eval_batches(task.cfg.data, 64, max_examples=64))
    exported = next(data.eval_batches(codes_cfg, 64, max_examples=64))
    np.testing.assert_array_equal(exported['label'], images['label'])
    # the argmin, recomputed by brute force from the encoder's outputs and the codebook
    z_e, codebook = encode(task, params, jnp.asarray(images['image']))
    brute = ((np.asarray(z_e)[..., None, :] - np.asarray(codebook)) ** 2).sum(-1).argmin(-1)
    np.testing.assert_array_equal(exported['image'][..., 0], brute)
    assert len(np.unique(brute)) > 2
    decoded, mean = task.images_from_codes(params, jnp.asarray(exported['image'][..., 0]))
    assert decoded.shape == (64, 8, 8, 1) and decoded.dtype == jnp.uint8
    assert float(mean.min()) >= 0 and float(mean.max()) <= 1

    # the autoregressive task trains on the codes unchanged: tokens are the 16 codes
    prior = config_lib.load_config(str(CONFIGS / 'vqvae_prior.py'))
    for key, value in {'data.name': codes_cfg.name, 'model.num_layers': 1,
                       'model.embed_dim': 16, 'model.mlp_dim': 32, 'model.num_heads': 2,
                       'train.batch_size': 8}.items():
        config_lib.set_value(prior, key, value)
    setup = prepare(prior, devices=jax.devices()[:1])
    assert setup.task.name == 'autoregressive' and setup.task.model.vocab_size == 16
    state = setup.init_state(0)
    batch = next(data.train_iterator(prior.data, 8, seed=0))
    _, metrics = setup.train_step()(state, setup.put_batch(batch))
    assert abs(float(metrics['loss']) - math.log(16)) < 1.0


@pytest.mark.parametrize('overrides, fragment', [
    ({'model.likelihood': 'gaussian'}, 'model.likelihood must be one of'),
    ({'model.likelihood': 'bernoulli'}, 'needs 2-level images'),
    ({'model.num_codes': 1}, 'model.num_codes must be in [2, 65536]'),
    ({'model.stages': 4}, 'are not divisible by 16'),
    ({'model.stages': 0}, 'model.stages (stride-2 stages) must be >= 1'),
    ({'model.code_dim': 0}, 'must be positive'),
    ({'model.beta': -1.0}, 'must be >= 0'),
    ({'model.codebook_update': 'kmeans'}, 'model.codebook_update must be'),
    ({'model.codebook_update': 'gradient'}, 'needs a value >= 0 and --config.model.codebook'),
])
def test_bad_configs_are_one_sentence_user_errors(overrides, fragment, tfds_dir):
    with pytest.raises(UserError, match=re.escape(fragment)):
        prepare(tiny_config(tfds_dir, **overrides))


def test_an_arrays_folder_without_info_is_a_user_error(tmp_path):
    cfg = config_lib.base_config().data
    cfg.name = f'arrays:{tmp_path}'
    with pytest.raises(UserError, match='holds no info.json'):
        data.describe(cfg)


# ---- the codebook as running averages -------------------------------------------------------

def test_ema_codebook_is_the_running_mean_of_the_assigned_vectors():
    rng = np.random.default_rng(3)
    codebook = rng.normal(size=(4, 3)).astype(np.float32)
    stats = vq.ema_init(jnp.asarray(codebook))
    np.testing.assert_allclose(vq.ema_codebook(stats, 0.0), codebook, rtol=1e-6)
    size, total = np.ones(4), codebook.astype(np.float64)
    for _ in range(3):   # codes 0 and 1 take every vector, 2 and 3 none
        z = rng.normal(size=(2, 5, 3)).astype(np.float32)
        indices = rng.integers(0, 2, size=(2, 5))
        stats = vq.ema_update(stats, jnp.asarray(z), jnp.asarray(indices), 0.9)
        for k in range(4):
            chosen = z[indices == k]
            size[k] = 0.9 * size[k] + 0.1 * len(chosen)
            total[k] = 0.9 * total[k] + 0.1 * chosen.sum(0)
    np.testing.assert_allclose(stats['cluster_size'], size, rtol=1e-5)
    np.testing.assert_allclose(stats['embed_sum'], total, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(vq.ema_codebook(stats, 0.0), total / size[:, None], rtol=1e-5)
    # a code no one picks keeps its place (count and sum decay together); Laplace smoothing
    # changes the division by at most (n + K eps) / n
    np.testing.assert_allclose(vq.ema_codebook(stats)[2:], codebook[2:], rtol=1e-3)
    # restarts: codes 2 and 3 counted 0.729 < 1 times per step move onto vectors of the batch
    z = rng.normal(size=(6, 3)).astype(np.float32)
    moved, count = vq.restart_dead_codes(stats, jnp.asarray(z), jax.random.key(0), 1.0)
    assert int(count) == 2
    np.testing.assert_allclose(moved['cluster_size'], [size[0], size[1], 1.0, 1.0], rtol=1e-6)
    for k in (2, 3):
        assert any(np.allclose(moved['embed_sum'][k], row) for row in z)
    np.testing.assert_array_equal(moved['embed_sum'][:2], stats['embed_sum'][:2])


@pytest.mark.integration
def test_an_ema_step_sets_the_codebook_from_the_averages_and_restarts_dead_codes(tfds_dir):
    cfg = tiny_config(tfds_dir, **{'model.codebook_update': 'ema',
                                   'model.restart_threshold': 1.0, 'model.ema_decay': 0.5})
    setup = prepare(cfg, devices=jax.devices()[:1])
    batch = next(data.train_iterator(cfg.data, cfg.train.batch_size, seed=0))
    with setup.context():
        state = setup.init_state(0)
        start = jax.device_get(state.params['codebook'])
        np.testing.assert_allclose(vq.ema_codebook(state.model_state, 0.0), start, rtol=1e-6)
        z_e, _ = encode(setup.task, state.params, jnp.asarray(batch['image']))
        new, metrics = setup.train_step()(state, setup.put_batch(batch))   # donates state
    z = np.asarray(z_e).reshape(-1, 8)
    codes = vq.nearest_codes(jnp.asarray(z), jnp.asarray(start))
    used = np.bincount(np.asarray(codes), minlength=16)
    # codes assigned 0 times average 0.5 < 1 per step: every one of them restarts
    assert int(metrics['restarted']) == (used == 0).sum() > 0
    np.testing.assert_allclose(new.params['codebook'], vq.ema_codebook(new.model_state),
                               rtol=1e-6)
    for k in np.flatnonzero(used):   # the others are the mean of old place and assigned vectors
        want = (0.5 * start[k] + 0.5 * z[codes == k].sum(0)) / (0.5 + 0.5 * used[k])
        np.testing.assert_allclose(new.params['codebook'][k], want, rtol=1e-3, atol=1e-4)
    for k in np.flatnonzero(used == 0):
        assert np.abs(z - np.asarray(new.params['codebook'][k])).max(-1).min() < 1e-3
