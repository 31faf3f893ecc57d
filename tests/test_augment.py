"""On-device augmentations: shapes and range, per-example randomness and determinism, and each
augmentation alone against a property only a correct implementation has (a crop of a ramp is a
clamped ramp of the right slope and offset, blur keeps constants and mass, contrast keeps the mean,
erasing zeroes exactly one rectangle, flip mirrors), plus bad configs."""

import jax
import numpy as np
import pytest

from dul_jax import model_configs
from dul_jax.data import augment as aug
from dul_jax.errors import UserError

OFF = {'crop_scale': (1.0, 1.0), 'crop_ratio': (1.0, 1.0), 'flip': False, 'jitter_prob': 0.0,
       'blur_prob': 0.0, 'erase_prob': 0.0}
DEFAULT = model_configs.augment()


@pytest.fixture(autouse=True, scope='module')
def _quick_compiles():
    """XLA without most optimizations: half the compile time, the same values up to rounding."""
    before = jax.config.read('jax_disable_most_optimizations')
    jax.config.update('jax_disable_most_optimizations', True)
    yield
    jax.config.update('jax_disable_most_optimizations', before)


augment_default = jax.jit(lambda x, k: aug.augment(x, k, DEFAULT))   # compiled once a shape


def _config(**changes):
    cfg = model_configs.augment()
    cfg.update(changes)
    return cfg


def _run(images, cfg, seed=0):
    """augment, jitted once per call with the config closed over, as numpy."""
    return np.asarray(jax.jit(lambda x, k: aug.augment(x, k, cfg))(images, jax.random.key(seed)))


def _images(shape, low=0.0, high=1.0, seed=0):
    return np.random.default_rng(seed).uniform(low, high, shape).astype(np.float32)


@pytest.mark.parametrize('shape', [(16, 28, 28, 1), (8, 16, 16, 3)])
def test_default_keeps_shape_dtype_and_range(shape):
    aug.validate(DEFAULT, shape[1:])
    out = np.asarray(augment_default(_images(shape), jax.random.key(0)))
    assert out.shape == shape and out.dtype == np.float32
    assert out.min() >= 0 and out.max() <= 1


def test_views_differ_per_example_and_are_deterministic():
    fn = jax.jit(lambda x, k: aug.two_views(x, k, DEFAULT))
    images = np.repeat(_images((1, 16, 16, 3)), 8, axis=0)
    key = jax.random.key(0)
    v1, v2 = (np.asarray(v) for v in fn(images, key))
    flat = v1.reshape(8, -1)
    gaps = np.abs(flat[:, None] - flat[None]).max(-1)
    assert (gaps + np.eye(8) > 1e-3).all()                   # 8 copies, 8 different views
    assert (np.abs(v1 - v2).reshape(8, -1).max(-1) > 1e-3).all()
    for i, view in enumerate((v1, v2)):                      # view i = augment(fold_in(key, i))
        expected = augment_default(images, jax.random.fold_in(key, i))
        np.testing.assert_allclose(view, expected, atol=1e-5)
    again = fn(images, key)
    assert np.array_equal(v1, again[0]) and np.array_equal(v2, again[1])
    assert not np.allclose(v1, fn(images, jax.random.key(1))[0])


def test_everything_off_is_the_identity():
    images = _images((4, 16, 16, 2))
    np.testing.assert_allclose(_run(images, _config(**OFF)), images, atol=1e-5)


def test_crop_of_a_ramp_is_a_clamped_ramp_of_the_crop():
    """Bilinear resampling of a linear ramp is the ramp itself, clamped at the image border: so
    row i of a crop [y0, y0 + h] holds the ramp at clip((i + 0.5) h / H + y0 - 0.5), and the
    same for columns. Recover h and y0 (w and x0) per example and check them against the config:
    area 1/4 of the image, aspect w / h in [1, 2] (not symmetric, so swapping h and w fails)."""
    size, batch = 16, 16
    ramp = np.arange(size, dtype=np.float32)
    images = np.stack(np.meshgrid(ramp, ramp, indexing='ij'), -1)[None].repeat(batch, 0) / size
    out = _run(images, _config(**{**OFF, 'crop_scale': (0.25, 0.25), 'crop_ratio': (1.0, 2.0)}))
    i, mid = np.arange(size), size // 2
    lengths, offsets = np.zeros((2, batch)), np.zeros((2, batch))
    for axis, profiles in enumerate([out[..., 0], out[..., 1].transpose(0, 2, 1)]):
        np.testing.assert_allclose(profiles, profiles[:, :, :1].repeat(size, 2), atol=1e-6)
        for b, profile in enumerate(profiles[:, :, 0] * size):
            slope = profile[mid + 1] - profile[mid]          # samples near the middle never clamp
            start = profile[mid] - (mid + 0.5) * slope + 0.5
            expected = np.clip((i + 0.5) * slope + start - 0.5, 0, size - 1)
            np.testing.assert_allclose(profile, expected, atol=1e-4)
            lengths[axis, b], offsets[axis, b] = slope * size, start
    h, w = lengths
    np.testing.assert_allclose(h * w, 0.25 * size ** 2, rtol=1e-3)
    assert (w / h > 1 - 1e-3).all() and (w / h < 2 + 1e-3).all() and np.ptp(w / h) > 0.3
    assert (offsets > -1e-3).all() and (offsets < size - lengths + 1e-3).all()
    assert (np.std(offsets, axis=1) > 0.5).all()           # the position is random


def test_blur_keeps_constants_and_mass_and_spreads_with_sigma():
    images = np.zeros((2, 20, 20, 1), np.float32)
    images[0] = 0.37
    images[1, 10, 10] = 1.0
    i = np.arange(20) - 10
    variances = []
    for sigma in (1.0, 2.0):
        constant, point = _run(images, _config(**{**OFF, 'blur_prob': 1.0,
                                                   'blur_sigma': (sigma, sigma)}))[:, :, :, 0]
        np.testing.assert_allclose(constant, 0.37, atol=1e-6)
        assert point.sum() == pytest.approx(1.0, abs=1e-3)  # far from the edges: no mass lost
        variances.append((point.sum(1) * i ** 2).sum())
        assert variances[-1] == pytest.approx(sigma ** 2, rel=0.02)
        np.testing.assert_allclose(point, point.T, atol=1e-6)  # the same blur on rows and columns
    assert variances[1] > 3 * variances[0]


def test_contrast_keeps_the_mean_and_brightness_scales():
    images = _images((8, 12, 12, 1), 0.4, 0.6)
    out = _run(images, _config(**{**OFF, 'jitter_prob': 1.0, 'brightness': 0.0, 'contrast': 0.4}))
    mean = images.mean((1, 2, 3), keepdims=True)
    np.testing.assert_allclose(out.mean((1, 2, 3), keepdims=True), mean, atol=1e-5)
    factor = ((out - mean) / (images - mean)).reshape(8, -1)
    np.testing.assert_allclose(factor, factor[:, :1].repeat(factor.shape[1], 1), rtol=1e-3)
    assert (factor > 0.6 - 1e-4).all() and (factor < 1.4 + 1e-4).all() and factor.std() > 0.05
    images = _images((8, 12, 12, 1), 0.2, 0.6)
    out = _run(images, _config(**{**OFF, 'jitter_prob': 1.0, 'brightness': 0.4, 'contrast': 0.0}))
    factor = (out / images).reshape(8, -1)
    np.testing.assert_allclose(factor, factor[:, :1].repeat(factor.shape[1], 1), rtol=1e-5)
    assert (factor > 0.6 - 1e-4).all() and (factor < 1.4 + 1e-4).all() and factor.std() > 0.05


def test_erasing_zeroes_one_rectangle_of_the_right_area():
    size, scale = 16, (0.05, 0.25)
    images = _images((16, size, size, 2), 0.1, 1.0)
    out = _run(images, _config(**{**OFF, 'erase_prob': 1.0, 'erase_scale': scale,
                                   'erase_ratio': (0.5, 2.0)}))
    areas = []
    for image, erased in zip(images, out):
        zero = erased == 0
        mask = zero.all(-1)
        assert np.array_equal(mask, zero.any(-1))            # every channel of the same pixels
        np.testing.assert_array_equal(erased[~mask], image[~mask])
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        h, w = rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1
        assert mask.sum() == h * w                           # its bounding box, filled
        slack = (h + w) / 2 + 0.25                           # rounding h and w to whole pixels
        assert scale[0] * size ** 2 - slack <= h * w <= scale[1] * size ** 2 + slack
        areas.append(h * w)
    assert len(set(areas)) > 3


def test_flip_gives_the_image_or_its_mirror():
    image = _images((1, 8, 8, 1))
    out = _run(image.repeat(16, 0), _config(**{**OFF, 'flip': True}))
    same = np.abs(out - image).reshape(16, -1).max(-1) < 1e-5
    mirror = np.abs(out - image[:, :, ::-1]).reshape(16, -1).max(-1) < 1e-5
    assert (same | mirror).all() and same.any() and mirror.any()


@pytest.mark.parametrize('key, value', [('crop_scale', (0.5, 1.5)), ('blur_sigma', (0.0, 1.0)),
                                        ('jitter_prob', 1.5), ('brightness', 1.0)])
def test_validate_names_the_bad_key(key, value):
    with pytest.raises(UserError, match=f'model.augment.{key}'):
        aug.validate(_config(**{key: value}), (28, 28, 1))


def test_validate_refuses_tiny_images():
    aug.validate(model_configs.augment(), (28, 28, 1))
    with pytest.raises(UserError, match='4x4'):
        aug.validate(model_configs.augment(), (3, 28, 1))
