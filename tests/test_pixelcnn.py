"""PixelCNN family: causal masks (by Jacobian), the discretized logistic mixture against hand
computations and numerical integration, the task's losses, training, sharding and sampling."""

import itertools
import json
import math
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import quick_compiles
from scipy import integrate, special

from dul_jax import config as config_lib
from dul_jax import data
from dul_jax.losses import logistic_mixture as lm
from dul_jax.models import pixelcnn_decode
from dul_jax.models.pixelcnn import GatedPixelCNN, PixelCNN, raster_mask
from dul_jax.tasks.base import StepContext
from dul_jax.train import loop
from dul_jax.train.setup import prepare

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIGITS = os.path.join(REPO, 'experiments', 'configs', 'gated_pixelcnn_digits.py')


@pytest.fixture(scope='module', autouse=True)
def _quick_compiles():
    with quick_compiles():
        yield


def random_params(init, *args, scale=0.3, bias_scale=0.0, seed=0):
    """Normal random parameters of init's shapes, drawn by numpy: compiling a model's
    jax.random initialisers costs seconds per model on this CPU, and these tests need none.
    Biases (class biases too) get `bias_scale`: 0 by default, as in the real initialisers."""
    rng = np.random.default_rng(seed)
    shapes = nn.meta.unbox(jax.eval_shape(init, jax.random.key(0), *args))

    def draw(path, s):
        std = bias_scale if 'bias' in jax.tree_util.keystr(path) else scale
        return jnp.asarray(rng.normal(0.0, std, s.shape), s.dtype)
    return jax.tree_util.tree_map_with_path(draw, shapes)


# the training test's settings; the sharding test and test_compress's run use them too, so the
# persistent jit cache compiles their data-parallel init and step once
TRAINED = {'train.steps': 60, 'optim.lr': 3e-3}


def tiny_config(tfds_dir, **extra):
    """A 2-layer, 16-wide Gated PixelCNN on digits: milliseconds per step."""
    items = {'data.tfds_dir': tfds_dir, 'model.hidden': 16, 'model.num_layers': 2,
             'model.first_kernel_size': 3, 'model.class_conditional': False,
             'train.batch_size': 16, 'train.log_every': 5, 'train.eval_every': 0,
             'train.ckpt_every': 0, 'eval.batch_size': 64, 'eval.max_examples': 128,
             'sample.num': 4, 'optim.warmup_steps': 5, 'optim.ema_decay': 0.0}
    items.update(extra)
    return config_lib.load_config(DIGITS, [f'{k}={v}' for k, v in items.items()])


# ---- masks --------------------------------------------------------------------------------------

def test_raster_mask_by_hand():
    a = raster_mask((3, 3), (1, 1), 1, 1, data_channels=1, include_centre=False)[..., 0, 0]
    b = raster_mask((3, 3), (1, 1), 1, 1, data_channels=1, include_centre=True)[..., 0, 0]
    np.testing.assert_array_equal(a, [[1, 1, 1], [1, 0, 0], [0, 0, 0]])
    np.testing.assert_array_equal(b, [[1, 1, 1], [1, 1, 0], [0, 0, 0]])
    # RGB at the centre tap: channel k is group k % 3; 'A' needs g_in < g_out, 'B' g_in <= g_out
    centre_a = raster_mask((1, 1), (0, 0), 3, 6, data_channels=3, include_centre=False)[0, 0]
    centre_b = raster_mask((1, 1), (0, 0), 3, 6, data_channels=3, include_centre=True)[0, 0]
    np.testing.assert_array_equal(centre_a[:, :3], [[0, 1, 1], [0, 0, 1], [0, 0, 0]])
    np.testing.assert_array_equal(centre_b[:, 3:], [[1, 1, 1], [0, 1, 1], [0, 0, 1]])


def _reach(model_cls, channels, size=5, layers=3):
    """reach[o, i]: output position o (raster order over row, column, channel) has a nonzero
    gradient with respect to input position i, for some of four random inputs."""
    model = model_cls(out_per_channel=2, data_channels=channels, hidden=4 * channels,
                      num_layers=layers, kernel_size=3, first_kernel_size=7)
    x = jax.random.normal(jax.random.key(1), (4, size, size, channels))
    params = random_params(model.init, x)
    jac = jax.jit(jax.jacrev(lambda x: model.apply(params, x).sum(axis=(0, -1))))(x)
    # jac: (H, W, C) outputs x (B, H, W, C) inputs
    n = size * size * channels
    return np.abs(np.asarray(jac)).sum(axis=3).reshape(n, n) > 0


@pytest.mark.parametrize('channels', [1, 3])
def test_no_output_depends_on_its_own_or_later_positions_and_gated_has_no_blind_spot(channels):
    n = 25 * channels
    earlier = np.tril(np.ones((n, n), bool), k=-1)   # input i strictly before output o
    gated = _reach(GatedPixelCNN, channels)
    plain = _reach(PixelCNN, channels)
    assert not (gated & ~earlier).any() and not (plain & ~earlier).any()
    # the 5x5 image lies inside the receptive field: the gated model sees every earlier position
    assert (gated == earlier).all()
    # the plain PixelCNN, as deep, misses some: its blind spot lies above and to the right
    missing = np.argwhere(earlier & ~plain)
    assert len(missing) > 0
    out_rc = np.stack(np.unravel_index(missing[:, 0], (5, 5, channels))[:2], axis=1)
    in_rc = np.stack(np.unravel_index(missing[:, 1], (5, 5, channels))[:2], axis=1)
    # same pixel (only channel ordering) never missing; otherwise above and to the right
    assert ((in_rc[:, 0] < out_rc[:, 0]) & (in_rc[:, 1] > out_rc[:, 1])).all()


# ---- one position at a time from cached activations ---------------------------------------------

@pytest.mark.parametrize('model_cls, channels, layers, dtype', [
    (GatedPixelCNN, 1, 3, 'float32'), (GatedPixelCNN, 3, 3, 'float32'),
    (PixelCNN, 1, 3, 'float32'), (PixelCNN, 3, 3, 'float32'),
    (GatedPixelCNN, 1, 1, 'float32'), (GatedPixelCNN, 1, 2, 'bfloat16'),
    (PixelCNN, 1, 2, 'bfloat16')])
@pytest.mark.integration
def test_cached_steps_give_the_full_models_outputs_at_every_position(model_cls, channels,
                                                                       layers, dtype):
    """Writing an image position by position, the cached step's outputs at each position equal
    the full forward pass on the whole image (first layer 5 wide, so its padding is exercised;
    every bias nonzero and class-conditional, so a dropped bias or label shows)."""
    shape, num = (5, 6, channels), 2
    model = model_cls(out_per_channel=4, data_channels=channels, hidden=6 * channels,
                      num_layers=layers, kernel_size=3, first_kernel_size=5, num_classes=3,
                      dtype=jnp.dtype(dtype))
    images = jax.random.uniform(jax.random.key(2), (num,) + shape, minval=-1.0, maxval=1.0)
    labels = jnp.array([0, 2])
    params = random_params(model.init, images, labels, bias_scale=0.3)['params']
    full = np.asarray(model.apply({'params': params}, images, labels)).reshape(num, -1, 4)
    tolerance = {'atol': 2e-5, 'rtol': 1e-5} if dtype == 'float32' else {'atol': 0.1, 'rtol': 0.05}

    @jax.jit
    def position(state, t, values):
        outputs, state = pixelcnn_decode.step(model, params, state, shape, t, labels)
        return outputs, pixelcnn_decode.write(model, state, shape, t, values)

    state, flat = pixelcnn_decode.init_state(model, shape, num), images.reshape(num, -1)
    for t in range(flat.shape[1]):
        outputs, state = position(state, t, flat[:, t])
        np.testing.assert_allclose(outputs, full[:, t], **tolerance, err_msg=f'at {t}')


# ---- discretized logistic mixture ---------------------------------------------------------------

def _sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


def test_logistic_mixture_by_hand():
    # one component, mean 0, scale 1, three levels at -1, 0, 1 with half-width 0.5
    params = jnp.array([0.0, 0.0, 0.0])
    expected = [_sigmoid(-0.5), _sigmoid(0.5) - _sigmoid(-0.5), 1.0 - _sigmoid(0.5)]
    for x, p in enumerate(expected):
        nll = lm.discretized_logistic_mixture_nll(params, jnp.array(x), 3)
        np.testing.assert_allclose(float(nll), -math.log(p), rtol=1e-6)
    # two components, weights softmax([0, ln 3]) = (1/4, 3/4), means -1 and 1, scale e^-1 = 1/e
    params = jnp.array([0.0, math.log(3.0), -1.0, 1.0, 1.0, 1.0])
    s, w = math.exp(1.0), (0.25, 0.75)
    def bin_prob(mu, lo, hi):
        return _sigmoid((hi - mu) / s) - _sigmoid((lo - mu) / s)
    middle = sum(wk * bin_prob(mu, -0.5, 0.5) for wk, mu in zip(w, (-1.0, 1.0)))
    nll = lm.discretized_logistic_mixture_nll(params, jnp.array(1), 3)
    np.testing.assert_allclose(float(nll), -math.log(middle), rtol=1e-6)


def _logistic_pdf(x, mu, s):
    z = -abs(x - mu) / s
    return math.exp(z) / (s * (1.0 + math.exp(z)) ** 2)


def _quad_log_probs(params, levels):
    """log P(x) for every x by integrating the mixture's density over each bin (float64)."""
    k = len(params) // 3
    logits, means, log_scales = params[:k], params[k:2 * k], np.maximum(params[2 * k:], -7.0)
    weights = np.exp(logits - logits.max())
    weights /= weights.sum()
    half = 1.0 / (levels - 1)
    out = []
    for x in range(levels):
        c = 2 * x * half - 1
        lo = -np.inf if x == 0 else c - half
        hi = np.inf if x == levels - 1 else c + half
        total = 0.0
        for w, mu, ls in zip(weights, means, log_scales):
            s = math.exp(ls)
            # split at the mean so quad sees the peak; epsabs=0 keeps tiny bins relative
            cuts = sorted({lo, hi, min(max(mu, lo), hi)})
            for a, b in itertools.pairwise(cuts):
                total += w * integrate.quad(_logistic_pdf, a, b, args=(mu, s), epsabs=0.0,
                                            epsrel=1e-10, limit=200)[0]
        out.append(math.log(total))
    return np.array(out)


@pytest.mark.parametrize('levels, params', [
    (17, [0.3, -0.2, 1.0, -0.6, 0.1, 0.7, -1.0, -2.5, 0.5]),
    (256, [0.0, 2.0, -1.0, -0.9, 0.0, 0.95, -3.0, -7.0, -1.5]),   # scale e^-7: tiny far bins
    (2, [0.0, 0.4, -0.3]),
])
def test_logistic_mixture_matches_numerical_integration_and_sums_to_one(levels, params):
    params = np.array(params)
    ours = np.asarray(lm.discretized_logistic_mixture_log_probs(jnp.asarray(params), levels),
                      np.float64)
    reference = _quad_log_probs(params, levels)
    # bins down to e^-700 in float64 are covered here: float32 logs are still exact to ~1e-5
    finite = reference > -80.0
    np.testing.assert_allclose(ours[finite], reference[finite], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.exp(ours).sum(), 1.0, rtol=1e-5)
    nll = lm.discretized_logistic_mixture_nll(jnp.asarray(params), jnp.arange(levels), levels)
    np.testing.assert_allclose(-np.asarray(nll), ours, rtol=1e-5, atol=1e-5)


def test_logistic_bin_centres_are_the_exact_values_rounded_once():
    k = np.arange(256)
    expected = np.float32((2 * k - 255) / 255)   # float64, rounded once to float32
    for levels in (jnp.asarray(k), jnp.asarray(k, jnp.uint8)):
        np.testing.assert_array_equal(lm.bin_centres(levels, 256), expected)
        np.testing.assert_array_equal(jax.jit(lm.bin_centres, static_argnums=1)(levels, 256),
                                      expected)
    assert float(lm.bin_centres(jnp.array(0), 256)) == -1.0
    assert float(lm.bin_centres(jnp.array(255), 256)) == 1.0
    for levels in (2, 3, 17):
        np.testing.assert_array_equal(lm.bin_centres(jnp.arange(levels), levels),
                                      np.float32((2 * np.arange(levels) - (levels - 1))
                                                 / (levels - 1)))


def _pixelcnn_pp_log_probs_float64(params, targets):
    """openai/pixel-cnn pixel_cnn_pp/nn.py discretized_mix_logistic_loss, one channel, in
    float64 numpy: x = (2 k - 255) / 255, bins of half-width 1/255, the edge bins (x < -0.999,
    x > 0.999) taking the CDF to -inf / +inf; log-scales clamped at -7."""
    kk = params.shape[-1] // 3
    logits, means = params[..., :kk], params[..., kk:2 * kk]
    log_scales = np.maximum(params[..., 2 * kk:], -7.0)
    x = ((2.0 * targets - 255.0) / 255.0)[..., None]
    inv = np.exp(-log_scales)
    plus, minus = inv * (x - means + 1 / 255), inv * (x - means - 1 / 255)
    log_cdf_plus = plus - np.logaddexp(0.0, plus)            # log sigmoid(plus)
    log_one_minus_cdf_min = -np.logaddexp(0.0, minus)        # log (1 - sigmoid(minus))
    with np.errstate(divide='ignore'):  # far components' bins underflow to 0 (log -inf)
        log_delta = np.log(special.expit(plus) - special.expit(minus))
    log_probs = np.where(x < -0.999, log_cdf_plus,
                         np.where(x > 0.999, log_one_minus_cdf_min, log_delta))
    log_weights = logits - special.logsumexp(logits, axis=-1, keepdims=True)
    return special.logsumexp(log_probs + log_weights, axis=-1)


def test_logistic_mixture_nll_matches_pixelcnn_pp_formula_in_float64():
    rng = np.random.default_rng(0)
    n, k = 512, 3
    params = np.concatenate([rng.normal(size=(n, k)), rng.uniform(-1.1, 1.1, size=(n, k)),
                             rng.uniform(-4.5, -1.0, size=(n, k))], axis=-1)
    targets = np.concatenate([np.arange(256), rng.integers(0, 256, n - 256)])
    targets[:8] = [0, 255, 0, 255, 1, 254, 127, 128]
    expected = -_pixelcnn_pp_log_probs_float64(params, targets)
    got = lm.discretized_logistic_mixture_nll(jnp.asarray(params, jnp.float32),
                                              jnp.asarray(targets), 256)
    np.testing.assert_allclose(np.asarray(got, np.float64), expected, rtol=1e-5, atol=1e-5)


def test_logistic_mixture_tiny_bins_and_gradients_stay_finite():
    # a bin 100 scales from a sharp component: PixelCNN++'s direct difference of sigmoids
    # gives 0 (log -inf) in float32; the product form gives the right tail value
    params = jnp.array([0.0, -0.9, -7.0])     # one component at -0.9 with scale e^-7
    x = jnp.array(200)
    nll = float(lm.discretized_logistic_mixture_nll(params, x, 256))
    c, s = 2 * 200 / 255 - 1, math.exp(-7.0)
    upper, lower = (c + 1 / 255 + 0.9) / s, (c - 1 / 255 + 0.9) / s
    expected = -(-math.log1p(math.exp(-upper)) - lower - math.log1p(math.exp(-lower))
                 + math.log(-math.expm1(lower - upper)))
    np.testing.assert_allclose(nll, expected, rtol=1e-5)
    grad = jax.grad(lambda p: lm.discretized_logistic_mixture_nll(
        p, jnp.array([0, 7, 200, 255]), 256).sum())(jnp.tile(params, (4, 1)) * 3.0)
    assert np.isfinite(np.asarray(grad)).all()


# ---- the task -----------------------------------------------------------------------------------

def _zero_head(params):
    params = jax.tree.map(lambda x: x, params)
    params['head'] = jax.tree.map(jnp.zeros_like, params['head'])
    return params


@pytest.mark.parametrize('output', ['categorical', 'logistic_mixture'])
def test_task_losses_by_hand_with_a_zero_output_head(output, tfds_dir):
    # a zero head makes every position's distribution known in closed form
    cfg = tiny_config(tfds_dir, **{'model.output': output, 'model.num_mixtures': 2})
    setup = prepare(cfg)
    task = setup.task
    params = _zero_head(random_params(task.init, setup.dummy_batch()))
    images = np.random.default_rng(0).integers(0, 17, (4, 8, 8, 1)).astype(np.uint8)
    batch = {'image': images, 'label': np.zeros(4, np.int32), 'mask': np.ones(4)}
    if output == 'categorical':     # uniform over 17 levels
        per_pixel = np.full(images.shape, math.log(17.0))
    else:                           # two identical logistics at 0 with scale 1
        edges = np.concatenate([[-np.inf], (np.arange(16) * 2 + 1) / 16 - 1, [np.inf]])
        cdf = 1 / (1 + np.exp(-edges))
        per_pixel = -np.log(np.diff(cdf))[images]
    metrics = jax.jit(task.eval_metrics)(params, batch, None)
    np.testing.assert_allclose(metrics['nats_per_image'], per_pixel.sum(axis=(1, 2, 3)),
                               rtol=1e-5)
    np.testing.assert_allclose(metrics['loss'], per_pixel.mean(axis=(1, 2, 3)), rtol=1e-5)
    np.testing.assert_allclose(metrics['bits_per_dim'],
                               per_pixel.mean(axis=(1, 2, 3)) / math.log(2), rtol=1e-5)
    loss = jax.jit(task.loss)(params, batch, jax.random.key(0), StepContext(jnp.int32(0))).loss
    np.testing.assert_allclose(loss, per_pixel.mean(), rtol=1e-5)


@pytest.mark.integration
def test_training_on_digits_lowers_the_loss(tmp_path, tfds_dir):
    final = loop.train(tiny_config(tfds_dir, **TRAINED), str(tmp_path))
    with open(tmp_path / 'metrics.jsonl') as f:
        rows = [r for r in map(json.loads, f) if 'loss' in r]
    assert rows[-1]['loss'] < 0.7 * rows[0]['loss']
    assert final['bits_per_dim'] < 3.0                # uniform: log2(17) = 4.09
    np.testing.assert_allclose(final['nats_per_image'], final['loss'] * 64, rtol=1e-5)
    assert os.path.isfile(tmp_path / 'samples' / 'step_000060.png')


# ---- sharding -----------------------------------------------------------------------------------

@pytest.mark.integration
def test_loss_trajectory_is_the_same_on_every_mesh(tfds_dir):
    meshes = {'data=8': (8, 1, 1), 'fsdp=8': (1, 8, 1), 'data=2,fsdp=2,tensor=2': (2, 2, 2)}
    cfg = tiny_config(tfds_dir, **TRAINED)
    iterator = data.train_iterator(cfg.data, cfg.train.batch_size, seed=0)
    batches = [next(iterator) for _ in range(3)]
    trajectories, start = {}, None
    for name, (d, f, t) in meshes.items():
        cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor = d, f, t
        setup = prepare(cfg)
        # one init (the training run's), placed in each mesh's shardings: a compile, not three
        start = start or jax.device_get(setup.init_state(0))
        with setup.context():
            state = jax.device_put(start, setup.state_shardings)
            step = setup.train_step()
            losses = []
            for batch in batches:
                state, metrics = step(state, setup.put_batch(batch))
                losses.append(float(metrics['loss']))
        trajectories[name] = losses
        if name == 'fsdp=8':
            specs = [leaf.sharding.spec for leaf in jax.tree.leaves(state.params)]
            assert any('fsdp' in str(spec) for spec in specs), specs
    reference = trajectories['data=8']
    for name, losses in trajectories.items():
        np.testing.assert_allclose(losses, reference, rtol=1e-5, err_msg=name)


# ---- sampling -----------------------------------------------------------------------------------

@pytest.mark.parametrize('output', ['categorical', 'logistic_mixture'])
def test_samples_are_valid_levels_and_deterministic_for_a_seed(output, tfds_dir):
    cfg = tiny_config(tfds_dir, **{'model.output': output, 'model.class_conditional': True})
    setup = prepare(cfg)
    params = random_params(setup.task.init, setup.dummy_batch())
    with setup.context():
        a, b, c = (setup.task.sample(params, jax.random.key(seed), 4)['samples']
                   for seed in (3, 3, 4))
    assert a.shape == (4, 8, 8, 1) and a.min() >= 0 and a.max() < 17
    np.testing.assert_array_equal(a, b)
    assert (a != c).any()
    assert len(np.unique(a)) > 2        # an untrained model spreads over the levels
