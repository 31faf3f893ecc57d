"""VAE family: the latent-variable math against closed forms, the IWAE bound's properties, the
iwae and posterior evaluators, sharding over meshes, bad configs, and a tiny run end to end."""

import json
import math
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import perturbed_params, quick_compiles, train_losses

from dul_jax import config as config_lib
from dul_jax.errors import UserError
from dul_jax.evaluators import iwae
from dul_jax.losses import latent
from dul_jax.tasks.base import StepContext
from dul_jax.train import loop
from dul_jax.train.setup import prepare

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / 'experiments' / 'configs'
IWAE = {'model.objective': 'iwae', 'model.train_samples': 2}


@pytest.fixture(scope='module', autouse=True)
def _quick_compiles():
    with quick_compiles():
        yield


def tiny_config(tfds_dir, **extra):
    """A conv VAE of a few thousand parameters on 8x8 digits (17 levels)."""
    c = config_lib.load_config(str(CONFIGS / 'vae_digits.py'))
    settings = {
        'data.tfds_dir': tfds_dir, 'model.channels': (8,), 'model.hidden': (32,),
        'model.latent_dim': 8, 'model.likelihood': 'categorical', 'train.batch_size': 16,
        'train.steps': 60, 'train.log_every': 10, 'train.eval_every': 0, 'train.ckpt_every': 0,
        'train.sample_every': 0, 'eval.batch_size': 32, 'eval.max_examples': 64,
        'eval.iwae.k': 40, 'eval.iwae.chunk': 20, 'eval.iwae.batch_size': 16,
        'eval.iwae.examples': 32, 'eval.bound.examples': 64, 'sample.num': 6,
        'optim.warmup_steps': 5, 'optim.lr': 3e-3, 'optim.ema_decay': 0.0, **extra}
    for key, value in settings.items():
        config_lib.set_value(c, key, value)
    return c


@pytest.fixture(scope='module')
def vae(tfds_dir):
    """A fully connected task (fast op by op) with random params, and a batch of real digits."""
    setup = prepare(tiny_config(tfds_dir, **{'model.channels': ()}), devices=jax.devices()[:1])
    params = perturbed_params(setup.task, setup.dummy_batch(), scale=0.1)
    from dul_jax import data
    batch = next(data.eval_batches(setup.cfg.data, 8, max_examples=8))
    batch.pop('mask')
    return setup.task, params, batch


# ---- the math -----------------------------------------------------------------------------

def test_kl_to_standard_normal_matches_monte_carlo_and_the_general_gaussian_kl():
    from dul_jax.losses.gaussian import gaussian_kl
    mean, log_var = jnp.array([0.7, -1.2, 0.0]), jnp.array([-0.5, 0.8, 0.0])
    kl = latent.kl_to_standard_normal(mean, log_var)
    np.testing.assert_allclose(kl, gaussian_kl(mean, jnp.exp(log_var), 0.0, 1.0), rtol=1e-6)
    assert float(kl[2]) == 0.0
    z = mean + jnp.exp(0.5 * log_var) * jax.random.normal(jax.random.key(0), (400_000, 3))
    mc = (latent.gaussian_log_prob(z, mean, log_var) - latent.standard_normal_log_prob(z)).mean(0)
    np.testing.assert_allclose(mc, kl, atol=6e-3)


def test_gaussian_log_prob_matches_scipy():
    import scipy.stats
    z, mean, log_var = 0.3, -0.4, 0.6
    want = scipy.stats.norm(mean, math.exp(0.5 * log_var)).logpdf(z)
    np.testing.assert_allclose(latent.gaussian_log_prob(z, mean, log_var), want, rtol=1e-6)


def test_bernoulli_nll_is_exact_and_stable():
    logits = jnp.array([0.3, -2.0, 80.0, -80.0])
    x = jnp.array([1.0, 0.0, 0.0, 0.0])
    p = jax.nn.sigmoid(jnp.array([0.3, -2.0]))
    np.testing.assert_allclose(latent.bernoulli_nll(logits[:2], x[:2]),
                               [-math.log(p[0]), -math.log(1 - p[1])], rtol=1e-6)
    np.testing.assert_allclose(latent.bernoulli_nll(logits[2:], x[2:]), [80.0, 0.0], atol=1e-6)


def test_log_mean_exp_does_not_overflow_and_iwae_of_one_draw_is_its_log_weight():
    x = jnp.array([[1000.0, 1000.0], [-1000.0, -1000.0 + math.log(3.0)]])
    np.testing.assert_allclose(latent.log_mean_exp(x), [1000.0, -1000.0 + math.log(2.0)],
                               rtol=1e-6)
    log_w = jnp.array([[-3.5], [7.25]])
    np.testing.assert_array_equal(latent.iwae_bound(log_w), log_w[:, 0])


def test_free_bits_floors_each_dimension_averaged_over_the_batch():
    kl = jnp.array([[0.1, 2.0, 0.0], [0.3, 1.0, 0.0]])
    np.testing.assert_allclose(latent.free_bits_kl(kl, 0.5), [0.5 + 1.5 + 0.5] * 2)
    np.testing.assert_array_equal(latent.free_bits_kl(kl, 0.0), kl.sum(-1))


# ---- the bound on a model ------------------------------------------------------------------

@pytest.mark.integration
def test_iwae_of_one_draw_is_the_elbo_estimate_and_rises_with_k(vae):
    task, params, batch = vae
    rng = jax.random.key(3)
    # k = 1 with the bound_terms draw: -(reconstruction + log q - log p(z)); its mean over
    # draws is the ELBO with the analytic KL
    weights = jax.jit(task.log_importance_weights, static_argnums=3)
    log_w = weights(params, batch, rng, 1)
    np.testing.assert_array_equal(latent.iwae_bound(log_w), log_w[:, 0])
    draws = weights(params, batch, rng, 4000)
    terms = jax.jit(task.bound_terms)(params, batch, rng)
    analytic = -(terms['kl'] + jax.jit(_mean_reconstruction, static_argnums=0)(task, params, batch))
    standard_error = draws.std(-1) / math.sqrt(draws.shape[-1])
    assert np.all(np.abs(draws.mean(-1) - analytic) < 4 * standard_error + 1e-3)
    bounds = [float(latent.iwae_bound(draws.reshape(8, -1, k)).mean()) for k in (1, 10, 100, 1000)]
    assert bounds == sorted(bounds) and bounds[-1] > bounds[0] + 1.0


def _mean_reconstruction(task, params, batch):
    """E_q[-log p(x|z)] by Monte Carlo with many draws."""
    mean, log_var = task.posterior(params, batch['image'])
    z = task._draw(mean, log_var, jax.random.key(9), 4000)
    return task._reconstruction_nll(params, z, batch['image']).mean(-1)


@pytest.mark.integration
def test_bound_is_exactly_log_p_when_the_posterior_is_the_prior_and_x_ignores_z(vae):
    """Zero the encoder's output layer (q = N(0, 1) = p(z)) and the decoder's first layer (p(x|z)
    = p(x)): every importance weight is p(x), so the bound is log p(x) for any k."""
    task, params, batch = vae
    params = jax.tree_util.tree_map_with_path(
        lambda path, p: jnp.zeros_like(p) if ('posterior' in jax.tree_util.keystr(path)
                                              or 'dense_0' in jax.tree_util.keystr(path)
                                              and 'decoder' in jax.tree_util.keystr(path)
                                              and 'kernel' in jax.tree_util.keystr(path))
        else p, params)
    z0 = jnp.zeros((1, task.cfg.model.latent_dim))
    log_probs = jax.jit(task.pixel_log_probs)(params, z0)[0]
    x = batch['image'].astype(jnp.int32)
    log_px = jnp.take_along_axis(log_probs[None], x[..., None], -1).reshape(8, -1).sum(-1)
    bound = jax.jit(iwae.log_likelihood_bound, static_argnums=(0, 4, 5))(
        task, params, batch, jax.random.key(0), 60, 20)
    np.testing.assert_allclose(bound, log_px, rtol=1e-5)


@pytest.mark.integration
def test_chunked_bound_equals_the_bound_over_all_draws_at_once(vae):
    task, params, batch = vae
    rng = jax.random.key(5)
    bound = jax.jit(iwae.log_likelihood_bound, static_argnums=(0, 4, 5))
    weights = jax.jit(task.log_importance_weights, static_argnums=3)
    whole = bound(task, params, batch, rng, 30, 30)
    direct = latent.iwae_bound(weights(params, batch, jax.random.fold_in(rng, 0), 30))
    np.testing.assert_allclose(whole, direct, rtol=1e-6)
    chunked = bound(task, params, batch, rng, 30, 10)
    draws = jnp.concatenate([weights(params, batch, jax.random.fold_in(rng, i), 10)
                             for i in range(3)], axis=-1)
    np.testing.assert_allclose(chunked, latent.iwae_bound(draws), rtol=1e-6)


@pytest.mark.integration
def test_kl_warm_up_weighs_the_kl_by_the_step(vae):
    task, params, batch = vae
    task.cfg.model.kl_warmup_steps = 10
    try:
        rng = jax.random.key(2)
        loss_at = jax.jit(lambda step: task.loss(params, batch, rng, StepContext(step)))
        m = loss_at(jnp.int32(0)).metrics
        dims = task.example_size()
        for step, weight in ((0, 0.0), (5, 0.5), (10, 1.0), (50, 1.0)):
            loss = loss_at(jnp.int32(step)).loss
            np.testing.assert_allclose(loss * dims, m['reconstruction'] + weight * m['kl'],
                                       rtol=1e-5)
    finally:
        task.cfg.model.kl_warmup_steps = 0


@pytest.mark.integration
def test_pixel_log_probs_are_normalised_and_score_what_the_loss_scores(vae):
    from dul_jax.losses.likelihood import categorical_nll
    from dul_jax.losses.logistic_mixture import discretized_logistic_mixture_nll
    task, _, batch = vae
    x = jnp.asarray(batch['image'][:2], jnp.int32)

    @jax.jit
    def check(out):   # one compilation per likelihood, not one per op
        log_probs = task._log_probs(out)
        picked = jnp.take_along_axis(log_probs, x[..., None], -1)[..., 0]
        kind = task.cfg.model.likelihood
        nll = categorical_nll(out, x) if kind == 'categorical' else \
            discretized_logistic_mixture_nll(out, x, 17) if kind == 'logistic_mixture' else picked
        return jnp.exp(log_probs).sum(-1), -picked, nll

    try:
        for likelihood, width in (('bernoulli', 1), ('categorical', 17), ('logistic_mixture', 9)):
            task.cfg.model.likelihood = likelihood
            total, picked, nll = check(3 * jax.random.normal(jax.random.key(width),
                                                             (2, 8, 8, 1, width)))
            np.testing.assert_allclose(total, 1.0, rtol=1e-5)
            if likelihood != 'bernoulli':   # digits have 17 levels
                np.testing.assert_allclose(picked, nll, rtol=1e-4, atol=1e-5)
    finally:
        task.cfg.model.likelihood = 'categorical'


# ---- configs, sharding, a run ---------------------------------------------------------------

@pytest.mark.parametrize('overrides, fragment', [
    ({'model.likelihood': 'gaussian'}, 'model.likelihood must be one of'),
    ({'model.likelihood': 'bernoulli'}, 'needs 2-level images'),
    ({'model.channels': (8, 8, 8, 8)}, 'not divisible by 16'),
    ({'model.objective': 'iwae', 'model.beta': 0.5}, 'change the ELBO only'),
    ({'model.kl_warmup_steps': -1}, 'must be >= 0'),
    ({'eval.evaluators': ('iwae',), 'eval.iwae.chunk': 7}, 'must divide eval.iwae.k'),
])
def test_bad_configs_are_one_sentence_user_errors(overrides, fragment, tfds_dir):
    with pytest.raises(UserError, match=re.escape(fragment)):
        prepare(tiny_config(tfds_dir, **overrides))


def test_evaluators_refuse_a_family_without_latents(tfds_dir):
    cfg = config_lib.load_config(str(CONFIGS / 'mae_digits.py'),
                                 [f'data.tfds_dir={tfds_dir}', 'eval.evaluators=("iwae",)'])
    with pytest.raises(UserError, match='has no latent variables'):
        prepare(cfg)


@pytest.mark.integration
def test_sharded_training_agrees_over_meshes(tfds_dir):
    from dul_jax import data
    cfg = tiny_config(tfds_dir, **IWAE)
    it = data.train_iterator(cfg.data, cfg.train.batch_size, seed=0)
    batches = [next(it) for _ in range(2)]
    losses, start = {}, None
    # data=8 is the tiny run's mesh; 2x2x2 shards batch, params (fsdp) and widths (tensor) at once
    for mesh in ({'data': 8, 'fsdp': 1, 'tensor': 1}, {'data': 2, 'fsdp': 2, 'tensor': 2}):
        for axis, size in mesh.items():
            cfg.mesh[axis] = size
        setup = prepare(cfg, devices=jax.devices()[:math.prod(mesh.values())])
        # one init (the tiny run's), placed in each mesh's shardings: a compile, not two
        start = start or jax.device_get(setup.init_state(0))
        _, losses[tuple(mesh.values())] = train_losses(
            setup, jax.device_put(start, setup.state_shardings), batches)
    reference = losses[(8, 1, 1)]
    assert all(math.isfinite(v) for v in reference)
    for mesh, trajectory in losses.items():
        np.testing.assert_allclose(trajectory, reference, rtol=2e-5, err_msg=str(mesh))


@pytest.mark.integration
def test_tiny_run_learns_and_reports_bounds_diagnostics_and_pictures(tmp_path, tfds_dir):
    # the mesh test's config: its data=8 train step is this run's (one compilation, cached)
    cfg = tiny_config(tfds_dir, **IWAE, **{'eval.evaluators': ('iwae', 'posterior', 'bound'),
                                           'train.sample_every': 60})
    final = loop.train(cfg, str(tmp_path))
    rows = [json.loads(line) for line in
            (tmp_path / 'metrics.jsonl').read_text().splitlines()]
    losses = [r['loss'] for r in rows if 'loss' in r and 'eval/loss' not in r]
    assert losses[-1] < 0.8 * losses[0]
    # the IWAE bound with k = 40 is tighter than the single-draw ELBO, both in nats per image
    assert final['iwae_nats_per_image'] < final['nats_per_image']
    assert final['iwae_examples'] == 32 and final['iwae_k'] == 40
    kl_dims = [final[f'kl_dim_{u:02d}'] for u in range(8)]
    assert final['kl_nats_per_image'] == pytest.approx(sum(kl_dims))
    assert 0 <= final['active_units'] <= 8
    assert final['bound_bits_per_dim'] == pytest.approx(
        final['bound_kl_bpd'] + final['bound_reconstruction_bpd'])
    for name in ('step_000060.png', 'step_000060_reconstructions.png',
                 'step_000060_interpolations.png'):
        assert (tmp_path / 'samples' / name).is_file()
