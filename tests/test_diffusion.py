"""Diffusion task: samplers, guidance, sharding over three meshes, a tiny training run, and the
Frechet distance."""

import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
from conftest import assert_same_loss_and_grads, loss_and_grads, perturbed_params, quick_compiles

from dul_jax import config as config_lib
from dul_jax import data
from dul_jax.errors import UserError
from dul_jax.losses import diffusion as dl
from dul_jax.losses import gaussian
from dul_jax.metrics import fid
from dul_jax.sampling.diffusion import guided_output
from dul_jax.train import loop
from dul_jax.train.setup import prepare

STEPS = 20  # diffusion steps T of the tiny models
DEFAULTS = pathlib.Path(__file__).resolve().parents[1] / 'experiments/configs/diffusion_defaults.py'


def tiny_config(tfds_dir, kind, **extra):
    """A U-Net or DiT of a few thousand parameters on digits, T = 20."""
    c = config_lib.load_config(str(DEFAULTS))
    settings = {
        'data.tfds_dir': tfds_dir, 'model.kind': kind, 'model.num_steps': STEPS,
        'model.channels': 16, 'model.channel_mults': (1, 2), 'model.num_res_blocks': 0,
        'model.attn_resolutions': (), 'model.num_heads': 2, 'model.groups': 4,
        'model.embed_dim': 32, 'model.num_layers': 1, 'model.mlp_dim': 64,
        'train.batch_size': 16, 'train.log_every': 10, 'train.eval_every': 0,
        'train.ckpt_every': 0, 'eval.batch_size': 16, 'eval.max_examples': 32,
        'eval.bound.examples': 16, 'sample.num': 8, 'sample.steps': 5, 'optim.warmup_steps': 5,
        'train.steps': 60, 'optim.lr': 3e-3, 'optim.ema_decay': 0.9, 'model.dropout': 0.0,
        **extra}
    for key, value in settings.items():
        config_lib.set_value(c, key, value)
    return c


@pytest.fixture(scope='module', autouse=True)
def _quick_compiles():
    with quick_compiles():
        yield


@pytest.fixture(scope='module')
def dit_task(tfds_dir):
    """A DiT task with random (not zero-initialised) params, so every output is non-trivial."""
    task = prepare(tiny_config(tfds_dir, 'dit'), devices=jax.devices()[:1]).task
    return task, perturbed_params(task, task.spec.dummy_batch(1))


def _sample(task, params, sampler, eta, rng, x_init, steps=STEPS):
    labels = jnp.arange(4, dtype=jnp.int32)
    return np.asarray(task.sample_x(params, rng, 4, sampler, steps, labels, eta, 2.0, True,
                                    x_init))


@pytest.mark.integration
def test_ddim_at_eta_0_depends_only_on_x_T(dit_task):
    task, params = dit_task
    x_init = jax.random.normal(jax.random.key(5), (4, 8, 8, 1))
    a = _sample(task, params, 'ddim', 0.0, jax.random.key(0), x_init)
    b = _sample(task, params, 'ddim', 0.0, jax.random.key(1), x_init)
    np.testing.assert_array_equal(a, b)
    noisy = _sample(task, params, 'ddim', 1.0, jax.random.key(1), x_init)
    assert np.abs(noisy - a).max() > 1e-2
    assert np.all(np.abs(a) <= 1.0)   # x_0 is clipped at the last step


@pytest.mark.integration
def test_ddim_on_all_steps_at_eta_1_is_ddpm(dit_task):
    task, params = dit_task
    x_init = jax.random.normal(jax.random.key(6), (4, 8, 8, 1))
    ddim = _sample(task, params, 'ddim', 1.0, jax.random.key(2), x_init)
    ddpm = _sample(task, params, 'ddpm', 1.0, jax.random.key(2), x_init)
    np.testing.assert_allclose(ddim, ddpm, atol=2e-5)
    other_noise = _sample(task, params, 'ddpm', 1.0, jax.random.key(3), x_init)
    assert np.abs(other_noise - ddpm).max() > 1e-2


@pytest.mark.integration
def test_guidance_scale_0_is_unconditional_and_1_conditional(dit_task):
    task, params = dit_task
    x = jax.random.normal(jax.random.key(7), (3, 8, 8, 1))
    t = jnp.array([3, 10, 19])
    labels = jnp.array([1, 5, 9])
    apply_fn = jax.jit(lambda x, t, y: task.apply(params, x, t, y))
    cond = apply_fn(x, t, labels)
    uncond = apply_fn(x, t, jnp.full_like(labels, task.null_class))
    assert np.abs(cond - uncond).max() > 1e-3
    for scale, expected in ((0.0, uncond), (1.0, cond), (3.0, uncond + 3.0 * (cond - uncond))):
        got = guided_output(apply_fn, x, t, labels, task.null_class, scale)
        # one batch of 6 against two of 3: XLA's CPU kernels round differently by batch size
        # (2e-5 seen on one machine); a wrong formula is off by |cond - uncond| > 1e-3
        np.testing.assert_allclose(got, expected, atol=1e-4)


@pytest.mark.integration
def test_vlb_decoder_term_uses_the_configured_variance(dit_task, tfds_dir):
    # DDPM's code (hojonathanho/diffusion diffusion_utils_2.py _vb_terms_bpd) scores x_0 at
    # t = 1 under N(x0_hat, exp(posterior_log_variance_clipped)): the t = 2 posterior variance.
    task, params = dit_task
    assert task.cfg.model.vlb_decoder_variance == 'posterior_clipped'  # the default
    levels = jax.random.randint(jax.random.key(8), (4, 8, 8, 1), 0, 17).astype(jnp.uint8)
    labels = jnp.full((4,), task.null_class, jnp.int32)
    rng = jax.random.key(9)
    x0 = task.to_model_space(levels)
    x_1 = dl.q_sample(x0, task._ab(1), jax.random.normal(jax.random.fold_in(rng, 1), x0.shape))
    x0_hat, _ = jax.jit(lambda p, x: task._predict_x0_eps(p, x, 1, labels, 1.0, False))(params,
                                                                                        x_1)
    tables = dl.posterior_tables(dl.discrete_betas('cosine', STEPS))
    variances = {'posterior_clipped': tables['posterior_variance'][2],
                 'beta_1': tables['beta'][1]}
    tasks = {'posterior_clipped': task, 'beta_1': prepare(
        tiny_config(tfds_dir, 'dit', **{'model.vlb_decoder_variance': 'beta_1'}),
        devices=jax.devices()[:1]).task}
    terms = {option: jax.jit(t.bound_terms)(params, {'image': levels, 'label': labels}, rng)
             for option, t in tasks.items()}
    for option, var in variances.items():
        expected = gaussian.discretized_gaussian_nll(x0, x0_hat, np.sqrt(var), 17)
        expected = expected.sum(axis=(1, 2, 3))
        np.testing.assert_allclose(terms[option]['decoder'], expected, rtol=1e-5, err_msg=option)
    # the option changes the decoder term alone, and changes it
    for key in ('prior', 'diffusion'):
        np.testing.assert_allclose(terms['beta_1'][key], terms['posterior_clipped'][key],
                                   rtol=1e-6, err_msg=key)
    assert np.abs(terms['posterior_clipped']['decoder'] - terms['beta_1']['decoder']).min() > 1e-3


@pytest.mark.parametrize('kind', ['unet', 'dit'])
@pytest.mark.integration
def test_sharded_loss_and_gradients_agree_over_meshes(kind, tfds_dir):
    # the family's part of a sharded step: its logical axes resolve on every mesh and the loss
    # and every gradient come out the same (the optimizer's update is the trainer's, shared)
    cfg = tiny_config(tfds_dir, kind)
    batch = next(data.train_iterator(cfg.data, cfg.train.batch_size, seed=0))
    results, params = {}, None
    for mesh in ({'data': 8, 'fsdp': 1, 'tensor': 1}, {'data': 1, 'fsdp': 8, 'tensor': 1},
                 {'data': 2, 'fsdp': 2, 'tensor': 2}):
        cfg.mesh.update(mesh)
        setup = prepare(cfg)
        if params is None:   # random everywhere: a zero-initialised output layer hides nothing
            params = perturbed_params(setup.task, setup.dummy_batch())
        results[tuple(mesh.values())] = loss_and_grads(setup, params, batch, jax.random.key(3))
        if mesh['fsdp'] == 8:
            specs = [s.spec for s in jax.tree.leaves(setup.state_shardings.params)]
            assert any('fsdp' in jax.tree.leaves(tuple(s)) for s in specs)
    for mesh, result in results.items():
        assert_same_loss_and_grads(result, results[(8, 1, 1)], err_msg=str(mesh))


@pytest.mark.integration
def test_tiny_training_run_lowers_the_loss(tmp_path, tfds_dir):
    cfg = tiny_config(tfds_dir, 'dit')
    final = loop.train(cfg, str(tmp_path))
    rows = [r for r in loop_metrics(tmp_path) if 'loss' in r and 'eval/loss' not in r]
    assert rows[-1]['loss'] < 0.7 * rows[0]['loss']
    # the bound: 8x8 digits, 17 levels; a uniform model costs log2(17) = 4.09 bits/dim
    assert 0.3 < final['bound_bits_per_dim'] < 12
    assert final['bound_bits_per_dim'] == pytest.approx(
        final['bound_prior_bpd'] + final['bound_diffusion_bpd'] + final['bound_decoder_bpd'])
    assert (tmp_path / 'samples' / 'step_000060.png').is_file()


@pytest.mark.parametrize('overrides, fragment', [
    ({'model.kind': 'vae'}, 'model.kind must be one of'),
    ({'model.image_size': 4}, 'smaller than the 8x8 images'),
    ({'model.channel_mults': (1, 2, 2, 2, 2)}, 'halves a 8x8 image 4 times'),
    ({'sample.steps': 50}, 'sample.steps must be in [0, model.num_steps=20]'),
    ({'model.label_dropout': 0.0, 'sample.guidance': 3.0}, 'classifier-free guidance'),
    ({'model.vlb_decoder_variance': 'learned'}, 'model.vlb_decoder_variance must be one of'),
])
def test_bad_configs_are_one_sentence_user_errors(overrides, fragment, tfds_dir):
    with pytest.raises(UserError, match=re.escape(fragment)):
        prepare(tiny_config(tfds_dir, 'unet', **overrides))


def loop_metrics(workdir):
    import json
    with open(workdir / 'metrics.jsonl') as f:
        return [json.loads(line) for line in f]


# ---- Frechet distance ------------------------------------------------------------------------

def test_frechet_distance_of_identical_sets_is_zero():
    features = np.random.default_rng(0).normal(size=(300, 16)) @ np.diag(np.arange(1, 17))
    assert abs(fid.frechet_distance_of(features, features)) < 1e-7 * np.trace(np.cov(features.T))
    precision, recall = fid.precision_recall(features, features)
    assert precision == recall == 1.0


def test_frechet_distance_matches_closed_forms():
    # 1-D: (mu1 - mu2)^2 + (sigma1 - sigma2)^2
    got = fid.frechet_distance(np.array([1.0]), np.array([[4.0]]), np.array([-2.0]),
                               np.array([[9.0]]))
    assert got == pytest.approx(9.0 + 1.0)
    # commuting (diagonal) covariances: sum of (sqrt(a_i) - sqrt(b_i))^2
    a, b = np.array([1.0, 2.0, 5.0]), np.array([3.0, 0.5, 5.0])
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert fid.frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected)
    # general covariances: against scipy's matrix square root
    rng = np.random.default_rng(1)
    m1, m2 = rng.normal(size=(5, 5)), rng.normal(size=(5, 5))
    c1, c2 = m1 @ m1.T, m2 @ m2.T
    sqrt = scipy.linalg.sqrtm(c1 @ c2).real
    expected = np.trace(c1 + c2 - 2 * sqrt)
    assert fid.frechet_distance(np.zeros(5), c1, np.zeros(5), c2) == pytest.approx(expected)


def test_precision_and_recall_see_a_missing_mode():
    rng = np.random.default_rng(2)
    real = np.concatenate([rng.normal(0, 1, (200, 2)), rng.normal(20, 1, (200, 2))])
    fake = rng.normal(0, 1, (400, 2))   # one of the two modes only
    precision, recall = fid.precision_recall(real, fake)
    assert precision > 0.9 and 0.3 < recall < 0.7
