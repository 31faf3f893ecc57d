"""Masked autoencoder: masking, unshuffling, the masked loss, sharding, and a tiny real run."""

import functools
import json
import os

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import quick_compiles, train_losses
from PIL import Image

from dul_jax import config as config_lib
from dul_jax import data
from dul_jax.errors import UserError
from dul_jax.losses.reconstruction import masked_mse, normalize_patches
from dul_jax.metrics import probes
from dul_jax.models.mae import MAE, num_kept, num_masked, random_masking, unshuffle
from dul_jax.models.patches import patchify, unpatchify
from dul_jax.train import loop
from dul_jax.train.setup import prepare

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAE_DIGITS = os.path.join(REPO, 'experiments', 'configs', 'mae_digits.py')
TINY_MODEL = {'model.embed_dim': 32, 'model.num_layers': 1, 'model.num_heads': 2,
              'model.mlp_dim': 64, 'model.decoder_embed_dim': 16, 'model.decoder_layers': 1,
              'model.decoder_heads': 2, 'model.decoder_mlp_dim': 32}


@pytest.fixture(scope='module', autouse=True)
def _quick_compiles():
    with quick_compiles():
        yield


def tiny_cfg(tfds_dir, **extra):
    """A tiny MAE on digits, 60 steps. The sharding test and the training test share it, so the
    training run's data=8 programs come from the persistent compilation cache."""
    items = {'data.tfds_dir': tfds_dir, **TINY_MODEL, 'train.steps': 60, 'train.batch_size': 16,
             'train.log_every': 10, 'train.eval_every': 0, 'train.ckpt_every': 0,
             'train.sample_every': 0, 'eval.batch_size': 64, 'sample.num': 6,
             'optim.lr': 2e-3, 'optim.warmup_steps': 10, 'optim.clip_norm': 0.0}
    items.update(extra)
    return config_lib.load_config(MAE_DIGITS, [f'{k}={v}' for k, v in items.items()])


@pytest.fixture(scope='module')
def model_and_params():
    """A tiny MAE on 8x8 one-channel images with patch 2: 16 patches, 12 masked."""
    model = MAE(image_shape=(8, 8, 1), patch=2, embed_dim=32, num_layers=1, num_heads=2,
                mlp_dim=64, decoder_embed_dim=16, decoder_layers=1, decoder_heads=2,
                decoder_mlp_dim=32, mask_ratio=0.75)
    images = jnp.zeros((2, 8, 8, 1))
    init = jax.jit(lambda rngs: nn.meta.unbox(model.init(rngs, images))['params'])
    return model, init({'params': jax.random.key(0), 'masking': jax.random.key(1)})


def _images(seed, batch=8):
    return jax.random.uniform(jax.random.key(seed), (batch, 8, 8, 1))


# ---- masking and order ------------------------------------------------------------------------

@pytest.mark.parametrize('n, ratio, kept', [
    (16, 0.9, 1), (16, 0.75, 4), (16, 0.5, 8), (16, 0.25, 12), (16, 0.99, 0), (16, 0.01, 15),
    (49, 0.25, 36), (49, 0.5, 24), (49, 0.75, 12), (49, 0.9, 4), (196, 0.75, 49),
    (10, 0.7, 3), (64, 0.6, 25), (16, 0.0, 16)])
def test_kept_count_is_mae_len_keep(n, ratio, kept):
    # facebookresearch/mae models_mae.py random_masking: len_keep = int(L * (1 - mask_ratio))
    assert int(n * (1 - ratio)) == kept  # the table above is the reference's own expression
    assert num_kept(n, ratio) == kept
    assert num_masked(n, ratio) == n - kept


@pytest.mark.parametrize('ratio', [0.25, 0.5, 0.75, 0.9])
def test_exactly_len_keep_patches_are_kept_and_masks_differ(ratio):
    n = 49
    tokens = jax.random.normal(jax.random.key(0), (32, n, 3))
    noise = jax.random.uniform(jax.random.key(1), (32, n))
    keep = n - num_masked(n, ratio)
    visible, mask, _ = random_masking(tokens, noise, keep)
    assert visible.shape == (32, int(n * (1 - ratio)), 3)
    np.testing.assert_array_equal(mask.sum(axis=1), n - int(n * (1 - ratio)))
    assert len({tuple(row) for row in np.asarray(mask)}) == 32  # a different mask per example
    # the visible tokens are exactly the unmasked ones (in shuffled order)
    for b in range(4):
        kept = np.asarray(tokens[b])[np.asarray(mask[b]) == 0]
        np.testing.assert_array_equal(np.sort(kept, axis=0), np.sort(visible[b], axis=0))


def test_unshuffling_with_ids_restore_gives_back_the_original_order():
    n, keep = 16, 5
    tokens = jnp.broadcast_to(jnp.arange(n, dtype=jnp.float32)[None, :, None], (4, n, 2))
    noise = jax.random.uniform(jax.random.key(2), (4, n))
    visible, mask, ids_restore = random_masking(tokens, noise, keep)
    hidden = jnp.take_along_axis(tokens, jnp.argsort(noise, axis=1)[:, keep:, None], axis=1)
    shuffled = jnp.concatenate([visible, hidden], axis=1)
    assert not np.array_equal(shuffled, tokens)
    np.testing.assert_array_equal(unshuffle(shuffled, ids_restore), tokens)
    # the mask is the "was not kept" indicator of the shuffled order, put back in original order
    not_kept = (jnp.arange(n) >= keep).astype(jnp.float32)
    np.testing.assert_array_equal(
        unshuffle(jnp.broadcast_to(not_kept[None, :, None], (4, n, 1)), ids_restore)[..., 0],
        mask)


@pytest.mark.integration
def test_model_masks_per_example_and_encoder_sees_only_visible_patches(model_and_params):
    model, params = model_and_params
    images = _images(3)

    @functools.partial(jax.jit, static_argnums=1)
    def run(x, method=None):
        return model.apply({'params': params}, x, rngs={'masking': jax.random.key(7)},
                           method=method)

    pred, mask = run(images)
    assert pred.shape == (8, 16, 4) and pred.dtype == jnp.float32
    np.testing.assert_array_equal(mask.sum(axis=1), 12)
    assert len({tuple(row) for row in np.asarray(mask)}) == 8
    latent, _, _ = run(images, MAE.encode)
    assert latent.shape == (8, 1 + 4, 32)  # cls + 4 visible patches
    patches = patchify(images, 2)
    masked_id, visible_id = int(np.argmax(mask[0])), int(np.argmin(mask[0]))
    for pid, should_change in ((masked_id, False), (visible_id, True)):
        changed = unpatchify(patches.at[0, pid].add(1.0), 2, 8, 8)
        new_latent, new_mask, _ = run(changed, MAE.encode)
        np.testing.assert_array_equal(new_mask, mask)
        assert (np.abs(new_latent - latent).max() > 1e-4) == should_change


def test_patchify_unpatchify_round_trip_and_layout():
    images = jax.random.uniform(jax.random.key(4), (2, 28, 28, 3))
    for patch in (4, 7):
        patches = patchify(images, patch)
        assert patches.shape == (2, (28 // patch) ** 2, patch * patch * 3)
        np.testing.assert_array_equal(unpatchify(patches, patch, 28, 28), images)
    # patch 1 (raster order) is the block at rows 0-3, columns 4-7, flattened (row, col, channel)
    np.testing.assert_array_equal(patchify(images, 4)[0, 1], images[0, 0:4, 4:8].reshape(-1))


# ---- the loss --------------------------------------------------------------------------------

def test_masked_mse_matches_hand_computation():
    pred = jnp.array([[[1.0, 2.0], [0.0, 0.0], [3.0, 3.0]]])
    target = jnp.array([[[0.0, 0.0], [5.0, 5.0], [1.0, 2.0]]])
    mask = jnp.array([[1.0, 0.0, 1.0]])
    # patch 0: ((1)^2 + (2)^2) / 2 = 2.5; patch 2: ((2)^2 + (1)^2) / 2 = 2.5; patch 1 ignored
    np.testing.assert_allclose(masked_mse(pred, target, mask), [2.5])
    # per-patch normalisation: [1, 3] has mean 2 and unbiased variance ((-1)^2 + 1^2) / (2 - 1)
    # = 2 -> [-1, 1] / sqrt(2)
    np.testing.assert_allclose(normalize_patches(jnp.array([[1.0, 3.0]]), eps=0.0),
                               [[-2 ** -0.5, 2 ** -0.5]], rtol=1e-6)
    np.testing.assert_allclose(normalize_patches(jnp.array([[4.0, 4.0]])), [[0.0, 0.0]])


def test_normalize_patches_uses_the_unbiased_variance_like_mae_forward_loss():
    # facebookresearch/mae models_mae.py forward_loss: torch's target.var(dim=-1) is unbiased
    # (ddof=1), then (target - mean) / (var + 1e-6) ** .5.
    patches = np.random.default_rng(0).uniform(size=(3, 5, 12)).astype(np.float32)
    x = patches.astype(np.float64)
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).sum(-1, keepdims=True) / (x.shape[-1] - 1)
    expected = (x - mean) / np.sqrt(var + 1e-6)
    got = np.asarray(normalize_patches(jnp.asarray(patches)))
    np.testing.assert_allclose(got, expected, rtol=2e-5, atol=2e-6)
    biased = (x - mean) / np.sqrt(x.var(-1, keepdims=True) + 1e-6)
    assert np.abs(got - biased).max() > 1e-2  # the biased form is measurably different here


@pytest.mark.parametrize('ratio, kept', [(0.9, 1), (0.75, 4), (0.5, 8), (0.3, 11)])
@pytest.mark.integration
def test_model_mask_has_len_keep_visible_patches(model_and_params, ratio, kept):
    model, params = model_and_params  # 16 patches
    assert kept == int(16 * (1 - ratio))
    latent, mask, _ = jax.jit(lambda x: model.apply(
        {'params': params}, x, ratio, rngs={'masking': jax.random.key(3)},
        method=MAE.encode))(_images(6, batch=4))
    np.testing.assert_array_equal((np.asarray(mask) == 0).sum(axis=1), kept)
    assert latent.shape == (4, 1 + kept, 32)


@pytest.mark.integration
def test_loss_ignores_visible_patches_and_sees_masked_ones(model_and_params):
    model, params = model_and_params
    images = _images(5)
    forward = jax.jit(lambda x: model.apply({'params': params}, x,
                                            rngs={'masking': jax.random.key(8)}))
    pred, mask = forward(images)
    target = patchify(images, 2)
    base = masked_mse(pred, target, mask)
    visible_id, masked_id = int(np.argmin(mask[0])), int(np.argmax(mask[0]))
    same = masked_mse(pred, target.at[0, visible_id].add(3.0), mask)
    np.testing.assert_array_equal(same, base)
    moved = masked_mse(pred, target.at[0, masked_id].add(3.0), mask)
    assert moved[0] > base[0] + 0.1
    np.testing.assert_array_equal(moved[1:], base[1:])


# ---- task, sharding, training -----------------------------------------------------------------

@pytest.mark.parametrize('override, fragment', [
    ({'model.patch_size': 3}, 'model.patch_size=3 does not tile'),
    ({'model.mask_ratio': 0.0}, 'at least one patch is masked'),
    ({'model.mask_ratio': 0.99}, 'one visible'),
    ({'model.mask_ratio': 0.95}, 'masks 16 of 16 patches'),  # int(16 * 0.05) = 0 kept
    ({'model.patch_size': 1, 'model.norm_pix_loss': True}, 'at least 2 values'),
    ({'model.decoder_embed_dim': 18}, 'model.decoder_embed_dim=18 must be a multiple of 4'),
    ({'model.probe_pool': 'max'}, 'model.probe_pool'),
])
def test_bad_configs_are_one_sentence_user_errors(override, fragment, tfds_dir):
    with pytest.raises(UserError, match=fragment):
        prepare(tiny_cfg(tfds_dir, **override))


@pytest.mark.integration
def test_loss_trajectory_is_the_same_on_every_mesh(tfds_dir):
    cfg = tiny_cfg(tfds_dir)
    batches = data.train_iterator(cfg.data, cfg.train.batch_size, seed=0)
    batches = [next(batches) for _ in range(3)]
    trajectories, start = {}, None
    for sizes in ({'data': 8, 'fsdp': 1, 'tensor': 1}, {'data': 1, 'fsdp': 8, 'tensor': 1},
                  {'data': 2, 'fsdp': 2, 'tensor': 2}):
        cfg.mesh.update(sizes)
        setup = prepare(cfg)
        # one init (the tiny run's), placed in each mesh's shardings: a compile, not three
        start = start or jax.device_get(setup.init_state(0))
        state = jax.device_put(start, setup.state_shardings)
        if sizes['fsdp'] == 8:
            specs = [leaf.sharding.spec for leaf in jax.tree.leaves(state.params)]
            assert any('fsdp' in jax.tree.leaves(tuple(spec)) for spec in specs)
        _, trajectories[tuple(sizes.values())] = train_losses(setup, state, batches)
    first, *others = trajectories.values()
    assert first[2] != first[0]  # the steps did change the params
    for other in others:
        np.testing.assert_allclose(other, first, rtol=1e-5)


@pytest.mark.integration
def test_tiny_digits_run_learns_and_writes_probes_and_pictures(tmp_path, tfds_dir):
    # Beating a random encoder on the probes takes ~1,000 steps at batch 128 (see the README and
    # experiments/mae_mask_ratio.py): too slow for a unit test, so only learning is checked here.
    workdir = str(tmp_path / 'run')
    final = loop.train(tiny_cfg(tfds_dir), workdir)
    rows = [r for r in loop_rows(workdir) if 'loss' in r]
    assert rows[-1]['step'] == 60 and rows[-1]['loss'] < 0.6 * rows[0]['loss']
    assert 0.0 < final['loss'] < rows[0]['loss']
    assert 0.1 < final['probe_accuracy'] <= 1.0 and 0.1 < final['knn_accuracy'] <= 1.0
    with Image.open(os.path.join(workdir, 'samples', 'step_000060.png')) as png:
        # 3 rows (original, masked, reconstruction) of 6 images of 8x8 at scale 8, 1 px padding
        assert png.size == (8 * (6 * 9 + 1), 8 * (3 * 9 + 1))


def loop_rows(workdir):
    with open(os.path.join(workdir, 'metrics.jsonl')) as f:
        return [json.loads(line) for line in f]


def test_knn_and_linear_probe_on_separable_points():
    rng = np.random.default_rng(0)
    centers = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]])
    y = rng.integers(0, 3, 300)
    x = centers[y] + 0.05 * rng.normal(size=(300, 2))
    assert probes.knn_accuracy(x[:200], y[:200], x[200:], y[200:], k=5) == 1.0
    assert probes.linear_probe_accuracy(x[:200], y[:200], x[200:], y[200:]) == 1.0
    # a tie (2 votes each) goes to the class with the larger summed similarity
    train = np.array([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [0.2, 1.0]])
    assert probes.knn_accuracy(train, np.array([0, 0, 1, 1]), np.array([[1.0, 0.2]]),
                               np.array([0]), k=4) == 1.0


@pytest.mark.integration
class EncoderVariantsTest(chex.TestCase):
    """The encoder jitted and not (chex variants): only visible patches reach the latent."""

    @chex.variants(with_jit=True, without_jit=True)
    def test_masked_patches_do_not_reach_the_latent(self):
        model = MAE(image_shape=(4, 4, 1), patch=2, embed_dim=16, num_layers=1, num_heads=2,
                    mlp_dim=32, decoder_embed_dim=8, decoder_layers=1, decoder_heads=2,
                    decoder_mlp_dim=16, mask_ratio=0.5)
        images = _images(5, batch=2)[:, :4, :4]
        rngs = {'params': jax.random.key(0), 'masking': jax.random.key(1)}
        params = nn.meta.unbox(jax.jit(model.init)(rngs, images))['params']
        encode = self.variant(lambda x: model.apply({'params': params}, x, method=MAE.encode,
                                                    rngs={'masking': jax.random.key(2)}))
        latent, mask, _ = encode(images)
        chex.assert_shape(latent, (2, 1 + 2, 16))   # cls + 2 of 4 patches
        masked = int(np.argmax(mask[0]))
        changed, new_mask, _ = encode(unpatchify(patchify(images, 2).at[0, masked].add(1.0),
                                                 2, 4, 4))
        np.testing.assert_array_equal(new_mask, mask)
        np.testing.assert_allclose(changed, latent, atol=1e-6)
        with pytest.raises(AssertionError):
            model.apply({'params': params}, images[:, :2], rngs={'masking': jax.random.key(2)})
