"""Diffusion schedules, parameterisations, weightings, posterior, KL and decoder vs closed forms."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from dul_jax.losses import diffusion as dl
from dul_jax.losses import gaussian


@pytest.mark.parametrize('schedule', dl.SCHEDULES)
def test_discrete_alpha_bar_is_decreasing_from_one_to_almost_zero(schedule):
    for steps in (10, 1000):
        ab = dl.discrete_alpha_bars(schedule, steps)
        assert ab.shape == (steps + 1,) and ab[0] == 1.0
        assert np.all(np.diff(ab) < 0)
        assert 0 < ab[-1] < 1e-3


def test_discrete_schedules_follow_their_continuous_forms():
    steps = 1000
    t = np.arange(0, steps, 50) / steps
    # cosine (Nichol & Dhariwal 2021, eq. 17): f(t) / f(0), f(t) = cos^2((t + s) / (1 + s) pi/2)
    f = lambda u: np.cos((u + 0.008) / 1.008 * np.pi / 2) ** 2
    np.testing.assert_allclose(dl.discrete_alpha_bars('cosine', steps)[::50][:-1], f(t) / f(0),
                               rtol=1e-5)
    # DDPM's linear betas are the Euler discretisation of the VP-SDE's beta(t) = 0.1 + 19.9 t
    vp_sde = np.exp(-(0.1 * t + 0.5 * 19.9 * t ** 2))
    np.testing.assert_allclose(dl.discrete_alpha_bars('linear', steps)[::50][:-1], vp_sde,
                               atol=5e-3)


def _example(seed=0, shape=(4, 3, 3, 1)):
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    x0 = jax.random.uniform(k1, shape, minval=-1, maxval=1)
    eps = jax.random.normal(k2, shape)
    ab = jax.random.uniform(k3, (shape[0], 1, 1, 1), minval=0.01, maxval=0.99)
    return x0, eps, ab


@pytest.mark.parametrize('prediction', dl.PREDICTIONS)
def test_targets_round_trip_to_x0_and_eps(prediction):
    x0, eps, ab = _example()
    x_t = dl.q_sample(x0, ab, eps)
    got_x0, got_eps = dl.to_x0_eps(prediction, dl.target(prediction, x0, eps, ab), x_t, ab)
    np.testing.assert_allclose(got_x0, x0, atol=2e-5)
    np.testing.assert_allclose(got_eps, eps, atol=2e-5)


def test_v_by_hand():
    x0, eps, ab = 0.5, -1.0, 0.64   # a = 0.8, s = 0.6
    np.testing.assert_allclose(dl.target('v', x0, eps, ab), 0.8 * -1.0 - 0.6 * 0.5, rtol=1e-6)
    np.testing.assert_allclose(dl.q_sample(x0, ab, eps), 0.8 * 0.5 - 0.6, rtol=1e-6)


@pytest.mark.parametrize('weighting', dl.WEIGHTINGS)
def test_each_parameterisation_gives_the_same_weighted_loss(weighting):
    # One prediction of x_0, expressed as each network output: the loss must not depend on the
    # parameterisation, and must equal x0_weight(SNR) * mean (x0_hat - x0)^2.
    x0, eps, ab4 = _example(1)
    x0_hat = x0 + 0.1 * jax.random.normal(jax.random.key(9), x0.shape)
    x_t = dl.q_sample(x0, ab4, eps)
    eps_hat = dl.eps_from_x0(x0_hat, x_t, ab4)
    outputs = {'x0': x0_hat, 'eps': eps_hat, 'v': dl.target('v', x0_hat, eps_hat, ab4)}
    ab = ab4[:, 0, 0, 0]
    snr = ab / (1 - ab)
    expected = dl.x0_weight(weighting, snr, 2.0) * ((x0_hat - x0) ** 2).mean(axis=(1, 2, 3))
    for prediction, out in outputs.items():
        got = dl.diffusion_loss(out, x0, eps, ab, prediction, weighting, gamma=2.0)
        np.testing.assert_allclose(got, expected, rtol=2e-4, err_msg=prediction)


def test_weights_by_hand():
    snr = jnp.array([0.5, 10.0])
    np.testing.assert_allclose(dl.x0_weight('min_snr_gamma', snr, 5.0), [0.5, 5.0])
    np.testing.assert_allclose(dl.loss_weight('min_snr_gamma', 'eps', snr, 5.0), [1.0, 0.5])
    np.testing.assert_allclose(dl.loss_weight('eps', 'v', snr), snr / (snr + 1), rtol=1e-6)
    np.testing.assert_allclose(dl.loss_weight('eps', 'eps', snr), [1.0, 1.0])


def test_posterior_matches_ddpm_formulas_and_bayes_rule():
    betas = np.linspace(1e-4, 0.02, 1000)
    alphas = 1 - betas
    ab = np.cumprod(alphas)
    rng = np.random.default_rng(0)
    x0, x_t = rng.normal(size=5), rng.normal(size=5)
    for t in (1, 10, 500, 999):   # 0-based: x_t with alpha_bar = ab[t], previous ab[t - 1]
        mean, var = dl.posterior(jnp.asarray(x0), jnp.asarray(x_t), ab[t], ab[t - 1])
        # DDPM eq. 7
        coef0 = betas[t] * np.sqrt(ab[t - 1]) / (1 - ab[t])
        coeft = (1 - ab[t - 1]) * np.sqrt(alphas[t]) / (1 - ab[t])
        np.testing.assert_allclose(mean, coef0 * x0 + coeft * x_t, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(var, betas[t] * (1 - ab[t - 1]) / (1 - ab[t]), rtol=1e-5)
        # Bayes: prior N(sqrt(ab_prev) x0, 1 - ab_prev), likelihood N(sqrt(alpha_t) x_prev, beta_t)
        precision = 1 / (1 - ab[t - 1]) + alphas[t] / betas[t]
        bayes_mean = (np.sqrt(ab[t - 1]) * x0 / (1 - ab[t - 1])
                      + np.sqrt(alphas[t]) * x_t / betas[t]) / precision
        np.testing.assert_allclose(var, 1 / precision, rtol=1e-5)
        np.testing.assert_allclose(mean, bayes_mean, rtol=1e-4, atol=1e-5)


def test_gaussian_kl_matches_monte_carlo():
    m1, v1, m2, v2 = 0.3, 0.5, -0.2, 1.7
    x = np.random.default_rng(0).normal(m1, math.sqrt(v1), 400_000)
    log_ratio = stats.norm.logpdf(x, m1, math.sqrt(v1)) - stats.norm.logpdf(x, m2, math.sqrt(v2))
    kl = float(gaussian.gaussian_kl(m1, v1, m2, v2))
    assert abs(kl - log_ratio.mean()) < 4 * log_ratio.std() / math.sqrt(len(x))
    assert float(gaussian.gaussian_kl(m1, v1, m1, v1)) == pytest.approx(0.0, abs=1e-7)


@pytest.mark.parametrize('num_levels', [2, 17, 256])
def test_discretized_gaussian_is_a_distribution_over_the_levels(num_levels):
    x = gaussian.levels_to_unit(jnp.arange(num_levels), num_levels)
    assert float(x[0]) == -1.0 and float(x[-1]) == pytest.approx(1.0)
    for mean, std in ((0.1, 0.3), (-0.9, 0.01), (2.0, 0.5)):
        nll = gaussian.discretized_gaussian_nll(x, mean, std, num_levels)
        np.testing.assert_allclose(jnp.exp(-nll).sum(), 1.0, rtol=1e-4)
        # an inner bin by hand
        k = num_levels // 2
        half = 1 / (num_levels - 1)
        p = (stats.norm.cdf((float(x[k]) + half - mean) / std)
             - stats.norm.cdf((float(x[k]) - half - mean) / std))
        if num_levels > 2 and p > 1e-30:
            np.testing.assert_allclose(float(nll[k]), -math.log(p), rtol=1e-3)


def test_discretized_gaussian_is_stable_for_tiny_std():
    x = gaussian.levels_to_unit(jnp.arange(17), 17)
    nll = gaussian.discretized_gaussian_nll(x, x[5], 1e-4, 17)
    assert float(nll[5]) == pytest.approx(0.0, abs=1e-6)
    assert np.all(np.isfinite(nll)) and float(nll[6]) > 1e3


# ---- float64 posterior tables and the decoder variance (DDPM's code) ---------------------------

def _ddpm_reference_tables(betas):
    """hojonathanho/diffusion diffusion_tf/diffusion_utils_2.py GaussianDiffusion2.__init__,
    recomputed in float64 numpy; 0-based steps (entry i is step t = i + 1)."""
    ab = np.cumprod(1.0 - betas)
    ab_prev = np.append(1.0, ab[:-1])
    var = betas * (1.0 - ab_prev) / (1.0 - ab)
    return {'posterior_variance': var,
            'posterior_log_variance_clipped': np.log(np.append(var[1], var[1:])),
            'posterior_mean_coef1': betas * np.sqrt(ab_prev) / (1.0 - ab),
            'posterior_mean_coef2': (1.0 - ab_prev) * np.sqrt(1.0 - betas) / (1.0 - ab),
            'alpha_bar': ab}


def test_posterior_tables_match_the_ddpm_reference_in_float64():
    betas = np.linspace(1e-4, 0.02, 1000, dtype=np.float64)  # the reference's linear schedule
    np.testing.assert_array_equal(dl.discrete_betas('linear', 1000), betas)
    tables = dl.posterior_tables(dl.discrete_betas('linear', 1000))
    assert all(v.dtype == np.float64 and v.shape == (1001,) for v in tables.values())
    for key, expected in _ddpm_reference_tables(betas).items():
        np.testing.assert_allclose(tables[key][1:], expected, rtol=1e-14, atol=0, err_msg=key)
    np.testing.assert_array_equal(tables['alpha_bar'], dl.discrete_alpha_bars('linear', 1000))
    # the clip: the t = 1 entry (0-based 0) is the t = 2 posterior variance, not log(0)
    assert tables['posterior_variance'][1] == 0.0
    assert tables['posterior_log_variance_clipped'][1] == np.log(tables['posterior_variance'][2])
    np.testing.assert_array_equal(tables['posterior_variance_clipped'][2:],
                                  tables['posterior_variance'][2:])
    # t = 1: the posterior mean is x_0 itself
    assert np.float32(tables['posterior_mean_coef1'][1]) == 1.0
    assert tables['posterior_mean_coef2'][1] == 0.0


def test_posterior_tables_are_float64_accurate_once_cast():
    tables = dl.posterior_tables(dl.discrete_betas('linear', 1000))
    table32 = {k: v.astype(np.float32) for k, v in tables.items()}
    # t = 1 with clipping is the t = 2 value, to float32 precision
    assert table32['posterior_variance_clipped'][1] == table32['posterior_variance'][2]
    assert np.float32(np.exp(tables['posterior_log_variance_clipped'][1])) == \
        table32['posterior_variance'][2]
    # each cast entry is the float64 value rounded once (relative error <= 2^-24) ...
    t = np.arange(2, 1001)
    exact = tables['posterior_variance'][t]
    np.testing.assert_allclose(table32['posterior_variance'][t], exact, rtol=2 ** -24, atol=0)
    # ... whereas float32 arithmetic from float32 alpha_bars (beta_t = 1 - ab_t / ab_{t-1})
    # loses digits where beta_t is small, hence the float64 tables
    ab32 = tables['alpha_bar'].astype(np.float32)
    _, var32 = dl.posterior(0.0, 0.0, ab32[t], ab32[t - 1])
    assert np.abs(np.asarray(var32, np.float64) / exact - 1).max() > 1e-5


def test_decoder_log_variance_options():
    tables = dl.posterior_tables(dl.discrete_betas('linear', 1000))
    b1, b2 = 1e-4, 1e-4 + (0.02 - 1e-4) / 999
    expected = b2 * (1 - (1 - b1)) / (1 - (1 - b1) * (1 - b2))  # posterior variance at t = 2
    assert dl.decoder_log_variance(tables, 'posterior_clipped') == pytest.approx(
        math.log(expected), abs=1e-12)
    assert dl.decoder_log_variance(tables, 'beta_1') == pytest.approx(math.log(1e-4), abs=1e-12)
    assert set(dl.DECODER_VARIANCES) == {'posterior_clipped', 'beta_1'}
    with pytest.raises(ValueError, match='unknown decoder variance'):
        dl.decoder_log_variance(tables, 'learned')
