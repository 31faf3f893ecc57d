"""Tests of the toy 2-D Gaussian mixtures (dul_jax/data/toy.py) and their path through the data
layer: no TFDS, no data.dir, no jit."""

import hashlib
import re

import numpy as np
import pytest

from dul_jax import config, data
from dul_jax.data import sources, toy
from dul_jax.errors import UserError

GRID = [(i, j) for i in (-4, -2, 0, 2, 4) for j in (-4, -2, 0, 2, 4)]
RING = [(2 * np.cos(2 * np.pi * k / 8), 2 * np.sin(2 * np.pi * k / 8)) for k in range(8)]
TOYS = {'toy:grid25': (GRID, 0.05), 'toy:ring8': (RING, 0.02)}


@pytest.fixture
def make_cfg(tmp_path, monkeypatch):
    """A data config whose data.dir and tfds_dir do not exist, with the TFDS entry points of the
    data layer made to fail: a toy set must need neither."""
    def fail(*args, **kwargs):
        raise AssertionError('a toy data set touched TFDS')
    monkeypatch.setattr(sources, 'prepared_builder', fail)
    monkeypatch.setattr(sources, 'data_source', fail)

    def make(name, **overrides):
        cfg = config.base_config().data
        cfg.update({'name': name, 'dir': str(tmp_path / 'data'),
                    'tfds_dir': str(tmp_path / 'tfds'), **overrides})
        return cfg
    yield make
    assert not (tmp_path / 'data').exists() and not (tmp_path / 'tfds').exists()


def one_sentence(message):
    return message.endswith('.') and '\n' not in message and not re.search(r'[.!?]\s', message)


def nearest(points, name):
    means = toy.mixture(name).means
    return np.argmin(np.linalg.norm(points[:, None] - means[None], axis=-1), axis=1)


@pytest.mark.parametrize('name', TOYS)
def test_mixture_definition(name):
    means, std = TOYS[name]
    mix = toy.mixture(name)
    assert mix.means.dtype == np.float32 and mix.means.shape == (len(means), 2)
    # the same set of means, in any order: each definition mean has its own match
    gaps = np.linalg.norm(np.asarray(means)[:, None] - mix.means[None], axis=-1)
    assert np.all(gaps.min(axis=1) < 1e-5)
    assert sorted(gaps.argmin(axis=1)) == list(range(len(means)))
    assert mix.std == std


@pytest.mark.parametrize('name', TOYS)
def test_spec(name, make_cfg):
    spec = data.describe(make_cfg(name))
    k = len(TOYS[name][0])
    assert spec == data.DataSpec(
        name=name, kind='points', shape=(2,), num_levels=0, num_classes=k, vocab=None,
        train_split='train', eval_split='test', num_train=100_000, num_eval=10_000)
    assert data.DataSpec.from_json(spec.to_json()) == spec


@pytest.mark.parametrize('name', TOYS)
def test_splits_are_fixed_distinct_and_follow_the_mixture(name):
    mix = toy.mixture(name)
    train, train_labels = toy.split_arrays(name, 'train')
    test, test_labels = toy.split_arrays(name, 'test')
    assert (train.shape, train.dtype, train_labels.shape, train_labels.dtype) == \
        ((100_000, 2), np.float32, (100_000,), np.int32)
    assert (test.shape, test.dtype, test_labels.shape) == ((10_000, 2), np.float32, (10_000,))
    assert not np.array_equal(train[:10_000], test)   # different seeds per split
    # a fresh draw (no cache) is the same: every process and run sees the same data
    toy.split_arrays.cache_clear()
    again, again_labels = toy.split_arrays(name, 'train')
    np.testing.assert_array_equal(again, train)
    np.testing.assert_array_equal(again_labels, train_labels)

    k, n = len(mix.means), len(train)
    counts = np.bincount(train_labels, minlength=k)
    assert len(counts) == k
    # equal weights: each count within 5 binomial std of n / k
    assert np.all(np.abs(counts - n / k) < 5 * np.sqrt(n / k * (1 - 1 / k)))
    for c in range(k):
        pts = train[train_labels == c]
        # sample mean within 5 std/sqrt(n) of the component's mean, per coordinate
        assert np.all(np.abs(pts.mean(0) - mix.means[c]) < 5 * mix.std / np.sqrt(len(pts)))
        # sample std (per coordinate) within 10% of the definition (its own std is ~1.1%)
        assert np.all(np.abs(pts.std(0) / mix.std - 1) < 0.1)
    # labels are the generating component, which is always the nearest mean here
    np.testing.assert_array_equal(nearest(train, name), train_labels)
    np.testing.assert_array_equal(nearest(test, name), test_labels)


def test_test_split_fingerprint():
    # Changing the seeds or the sampling rule must be a deliberate act.
    _, labels = toy.split_arrays('toy:grid25', 'test')
    assert hashlib.sha256(labels.tobytes()).hexdigest()[:16] == GRID25_TEST_LABELS_SHA256_PREFIX


GRID25_TEST_LABELS_SHA256_PREFIX = '2d710905b9493c6c'


@pytest.mark.parametrize('name', TOYS)
def test_train_iterator(name, make_cfg):
    cfg = make_cfg(name)
    train, _ = toy.split_arrays(name, 'train')
    rows = {p.tobytes() for p in train}
    batches = [next(it) for it in [data.train_iterator(cfg, 64, seed=3)] for _ in range(3)]
    for batch in batches:
        assert set(batch) == {'point', 'label'}
        assert (batch['point'].shape, batch['point'].dtype) == ((64, 2), np.float32)
        assert (batch['label'].shape, batch['label'].dtype) == ((64,), np.int32)
        assert all(p.tobytes() in rows for p in batch['point'])
        np.testing.assert_array_equal(nearest(batch['point'], name), batch['label'])
    again = next(data.train_iterator(cfg, 64, seed=3))
    np.testing.assert_array_equal(again['point'], batches[0]['point'])
    other = next(data.train_iterator(cfg, 64, seed=4))
    assert not np.array_equal(other['point'], batches[0]['point'])


@pytest.mark.parametrize('name', TOYS)
def test_eval_batches_cover_the_test_split_once(name, make_cfg):
    cfg = make_cfg(name)
    test, test_labels = toy.split_arrays(name, 'test')
    batches = list(data.eval_batches(cfg, 3000))
    assert len(batches) == 4   # 10,000 points, 2,000 of padding
    for batch in batches:
        assert set(batch) == {'point', 'label', 'mask'}
        assert batch['point'].shape == (3000, 2) and batch['point'].dtype == np.float32
        assert batch['label'].shape == (3000,) and batch['label'].dtype == np.int32
    mask = np.concatenate([b['mask'] for b in batches]) == 1
    assert mask.sum() == 10_000
    np.testing.assert_array_equal(np.concatenate([b['point'] for b in batches])[mask], test)
    np.testing.assert_array_equal(np.concatenate([b['label'] for b in batches])[mask], test_labels)
    # the train split too, when asked for
    first = next(data.eval_batches(cfg, 10, split='train'))
    np.testing.assert_array_equal(first['point'], toy.split_arrays(name, 'train')[0][:10])


def test_num_levels_and_unknown_names_are_user_errors(make_cfg):
    with pytest.raises(UserError) as info:
        data.describe(make_cfg('toy:grid25', num_levels=256))
    assert one_sentence(str(info.value)) and 'num_levels' in str(info.value)
    for call in (lambda: data.describe(make_cfg('toy:foo')), lambda: toy.mixture('toy:foo'),
                 lambda: toy.split_arrays('toy:foo', 'train'),
                 lambda: toy.mode_coverage(np.zeros((1, 2)), 'toy:foo')):
        with pytest.raises(UserError) as info:
            call()
        message = str(info.value)
        assert one_sentence(message), message
        assert 'toy:foo' in message and 'toy:grid25' in message and 'toy:ring8' in message
    with pytest.raises(UserError) as info:
        toy.split_arrays('toy:grid25', 'validation')
    assert one_sentence(str(info.value))


@pytest.mark.parametrize('name', TOYS)
def test_mode_coverage_of_real_points(name):
    test, _ = toy.split_arrays(name, 'test')
    k = len(TOYS[name][0])
    result = toy.mode_coverage(test[:2500], name)
    assert result['modes'] == k
    assert result['high_quality'] > 0.97    # 3 std of a 2-D Gaussian holds ~98.9%
    assert result['counts'].shape == (k,) and result['counts'].sum() <= 2500
    assert result['counts'].sum() == round(result['high_quality'] * 2500)   # modes don't overlap


@pytest.mark.parametrize('name, kept', [('toy:grid25', 10), ('toy:ring8', 3)])
def test_mode_coverage_of_a_collapsed_sampler(name, kept):
    mix = toy.mixture(name)
    rng = np.random.default_rng(7)
    modes = rng.choice(len(mix.means), size=kept, replace=False)
    labels = rng.choice(modes, size=2500)
    points = mix.means[labels] + mix.std * rng.standard_normal((2500, 2))
    result = toy.mode_coverage(points, name)
    assert result['modes'] == kept
    assert result['high_quality'] > 0.97
    assert set(np.flatnonzero(result['counts'] >= 20)) == set(modes)


@pytest.mark.parametrize('name, most', [('toy:grid25', 0.05), ('toy:ring8', 0.01)])
def test_mode_coverage_of_uniform_points(name, most):
    # Uniform on [-5, 5]^2: the 3-std discs cover 25 * pi * 0.15^2 / 100 ~ 1.8% of the square
    # for grid25 and 8 * pi * 0.06^2 / 100 ~ 0.09% for ring8.
    points = np.random.default_rng(0).uniform(-5, 5, size=(2500, 2))
    result = toy.mode_coverage(points, name)
    assert result['high_quality'] < most
    assert result['modes'] == 0


def test_mode_coverage_uses_euclidean_distance_and_its_knobs():
    mix = toy.mixture('toy:grid25')
    std, mean = mix.std, mix.means[0]
    # 2.5 std along each axis is 3.54 std away: outside, though each coordinate is inside 3 std
    diagonal = mean + 2.5 * std
    inside = mean + np.array([2.9 * std, 0.0])
    result = toy.mode_coverage(np.stack([diagonal, inside]), 'toy:grid25', min_count=1)
    assert result['high_quality'] == 0.5 and result['modes'] == 1 and result['counts'][0] == 1
    wider = toy.mode_coverage(np.stack([diagonal, inside]), 'toy:grid25', threshold_std=4.0,
                              min_count=2)
    assert wider['high_quality'] == 1.0 and wider['modes'] == 1 and wider['counts'][0] == 2
    # fewer than min_count near a mode: not covered, though still high quality
    few = toy.mode_coverage(np.repeat(mean[None], 19, axis=0), 'toy:grid25')
    assert few['modes'] == 0 and few['high_quality'] == 1.0 and few['counts'][0] == 19
