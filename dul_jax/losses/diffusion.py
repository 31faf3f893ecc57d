"""Gaussian diffusion: noise schedules, forward noising, prediction targets, losses and the bound.

Notation (Ho et al. 2020, "DDPM"): data x_0 in [-1, 1]; x_t = a_t x_0 + s_t eps with
a_t = sqrt(alpha_bar_t), s_t = sqrt(1 - alpha_bar_t), eps ~ N(0, I); SNR_t = a_t^2 / s_t^2 and
log-SNR = log(alpha_bar / (1 - alpha_bar)). Discrete schedules index t = 0..T with alpha_bar_0 = 1
(clean data). `diffusion_loss` is a weighted MSE (a training loss, not a likelihood); the bound's
terms are in nats, from `posterior` here and the Gaussian KL and discretized decoder in
gaussian.py, and `bits_per_dim` in likelihood.py converts.
"""

import jax
import jax.numpy as jnp
import numpy as np

SCHEDULES = ('linear', 'cosine')
PREDICTIONS = ('eps', 'v', 'x0')
WEIGHTINGS = ('eps', 'x0', 'v', 'min_snr_gamma')

# DDPM's linear betas for T = 1000; other T scale them by 1000 / T (Nichol & Dhariwal 2021), so
# the total noise, and hence alpha_bar at the end, stays about the same.
LINEAR_BETA_START, LINEAR_BETA_END = 1e-4, 0.02
COSINE_OFFSET = 0.008   # s in f(t) = cos^2((t + s) / (1 + s) * pi / 2)
MAX_BETA = 0.999        # cosine betas are clipped here, so the last step is not a singularity


# ---- schedules ----------------------------------------------------------------------------------

def _cosine_f(t):
    return np.cos((t + COSINE_OFFSET) / (1 + COSINE_OFFSET) * np.pi / 2) ** 2


def discrete_betas(schedule: str, num_steps: int) -> np.ndarray:
    """beta_t for t = 1..T as float64, shape (T,) (entry i is beta_{i+1}).

    linear: evenly spaced from 1e-4 to 0.02 (times 1000 / T).
    cosine: beta_t = 1 - f(t / T) / f((t - 1) / T), so alpha_bar_t = f(t / T) / f(0).
    Both clip beta_t at 0.999.
    """
    if schedule == 'linear':
        scale = 1000.0 / num_steps
        betas = np.minimum(np.linspace(LINEAR_BETA_START * scale, LINEAR_BETA_END * scale,
                                       num_steps), MAX_BETA)  # T < 20 would reach beta > 1
    elif schedule == 'cosine':
        f = _cosine_f(np.arange(num_steps + 1, dtype=np.float64) / num_steps)
        betas = np.minimum(1.0 - f[1:] / f[:-1], MAX_BETA)
    else:
        raise ValueError(f'unknown schedule {schedule!r}; use one of {SCHEDULES}')
    return betas


def discrete_alpha_bars(schedule: str, num_steps: int) -> np.ndarray:
    """alpha_bar_t for t = 0..T as float64, shape (T + 1,), alpha_bar_0 = 1, decreasing:
    alpha_bar_t = prod_{s <= t} (1 - beta_s) with `discrete_betas`."""
    return np.concatenate([[1.0], np.cumprod(1.0 - discrete_betas(schedule, num_steps))])


def snr_from_alpha_bar(ab):
    """SNR = alpha_bar / (1 - alpha_bar), elementwise (inf at alpha_bar = 1, i.e. t = 0)."""
    return ab / (1.0 - ab)


# ---- forward process and parameterisations -----------------------------------------------------

def q_sample(x0: jax.Array, ab: jax.Array, eps: jax.Array) -> jax.Array:
    """x_t = sqrt(alpha_bar) x_0 + sqrt(1 - alpha_bar) eps; `ab` broadcasts against x0 (e.g. (B,
    1, 1, 1))."""
    return jnp.sqrt(ab) * x0 + jnp.sqrt(1.0 - ab) * eps


def target(prediction: str, x0, eps, ab):
    """What a network trained with `prediction` regresses: eps, x_0, or v = a eps - s x_0.

    x0, eps: (B, H, W, C); ab: alpha_bar broadcasting against them (e.g. (B, 1, 1, 1)).
    """
    if prediction == 'eps':
        return eps
    if prediction == 'x0':
        return x0
    if prediction == 'v':
        return jnp.sqrt(ab) * eps - jnp.sqrt(1.0 - ab) * x0
    raise ValueError(f'unknown prediction {prediction!r}; use one of {PREDICTIONS}')


def to_x0_eps(prediction: str, output, x_t, ab):
    """(x_0, eps) implied by a network output in the `prediction` parameterisation at x_t.

    eps: x_0 = (x_t - s eps) / a.  x0: eps = (x_t - a x_0) / s.  v: x_0 = a x_t - s v,
    eps = s x_t + a v (since a^2 + s^2 = 1).
    """
    a, s = jnp.sqrt(ab), jnp.sqrt(1.0 - ab)
    if prediction == 'eps':
        return (x_t - s * output) / a, output
    if prediction == 'x0':
        return output, (x_t - a * output) / s
    if prediction == 'v':
        return a * x_t - s * output, s * x_t + a * output
    raise ValueError(f'unknown prediction {prediction!r}; use one of {PREDICTIONS}')


def eps_from_x0(x0, x_t, ab):
    """The noise that x_0 implies at x_t: (x_t - sqrt(alpha_bar) x_0) / sqrt(1 - alpha_bar).

    `ab` broadcasts against x_t as in `q_sample`; undefined at alpha_bar = 1 (t = 0).
    """
    return (x_t - jnp.sqrt(ab) * x0) / jnp.sqrt(1.0 - ab)


# ---- training loss ------------------------------------------------------------------------------

def x0_weight(weighting: str, snr, gamma: float = 5.0):
    """The weight w(t) of the loss w(t) ||x_0 - x0_hat||^2, elementwise in `snr` (unitless).

    Since ||eps - eps_hat||^2 = SNR ||x_0 - x0_hat||^2 and ||v - v_hat||^2 = (SNR + 1) ||...||^2:
      'eps': w = SNR           the unweighted eps-MSE, DDPM's L_simple (uniform in eps space)
      'x0':  w = 1             the unweighted x_0-MSE (the eps-MSE weighted by 1 / SNR)
      'v':   w = SNR + 1       the unweighted v-MSE (Salimans & Ho 2022)
      'min_snr_gamma': w = min(SNR, gamma)   Hang et al. 2023: the eps-MSE, capped at high SNR
    """
    if weighting == 'eps':
        return snr
    if weighting == 'x0':
        return jnp.ones_like(snr)
    if weighting == 'v':
        return snr + 1.0
    if weighting == 'min_snr_gamma':
        return jnp.minimum(snr, gamma)
    raise ValueError(f'unknown weighting {weighting!r}; use one of {WEIGHTINGS}')


def loss_weight(weighting: str, prediction: str, snr, gamma: float = 5.0):
    """The factor on the MSE in the network's own output space that gives `x0_weight`.

    Computed in the output space (not by converting to x_0), because recovering x0_hat from
    eps_hat divides by a tiny sqrt(alpha_bar) near t = T and loses float32 precision.
    """
    if weighting == prediction:
        return jnp.ones_like(snr)
    native = {'eps': snr, 'x0': jnp.ones_like(snr), 'v': snr + 1.0}[prediction]
    if weighting == 'min_snr_gamma' and prediction == 'eps':
        return jnp.minimum(1.0, gamma / snr)  # min(SNR, gamma) / SNR, finite at SNR = 0
    return x0_weight(weighting, snr, gamma) / native


def diffusion_loss(output, x0, eps, ab, prediction: str, weighting: str, gamma: float = 5.0):
    """Per-example weighted MSE, shape (B,): loss_weight * mean over pixels (output - target)^2.

    x0, eps, output: (B, H, W, C), x0 in [-1, 1]; ab: (B,) alpha_bar at each example's t.
    A weighted squared error in the network's output space (eps, x_0 or v units), not nats.
    """
    ab4 = ab.reshape((-1,) + (1,) * (x0.ndim - 1))
    err = (output.astype(jnp.float32) - target(prediction, x0, eps, ab4)) ** 2
    mse = err.reshape(err.shape[0], -1).mean(axis=-1)
    return loss_weight(weighting, prediction, snr_from_alpha_bar(ab), gamma) * mse


# ---- the reverse process and the variational bound ---------------------------------------------

def posterior(x0, x_t, ab_t, ab_prev):
    """Mean and variance of q(x_{t-1} | x_t, x_0) (DDPM eq. 6-7), with beta_t = 1 - ab_t / ab_prev:

    mean = sqrt(ab_prev) beta_t / (1 - ab_t) x_0 + sqrt(1 - beta_t) (1 - ab_prev) / (1 - ab_t) x_t
    var  = beta_t (1 - ab_prev) / (1 - ab_t)
    `ab_prev` may be any earlier alpha_bar (a skipped step, as in DDIM), which keeps it exact.
    """
    beta = 1.0 - ab_t / ab_prev
    mean = (jnp.sqrt(ab_prev) * beta / (1.0 - ab_t)) * x0 \
        + (jnp.sqrt(1.0 - beta) * (1.0 - ab_prev) / (1.0 - ab_t)) * x_t
    return mean, beta * (1.0 - ab_prev) / (1.0 - ab_t)


# The decoder p(x_0 | x_1)'s variance in the bound (see `decoder_log_variance`).
DECODER_VARIANCES = ('posterior_clipped', 'beta_1')


def posterior_tables(betas: np.ndarray) -> dict[str, np.ndarray]:
    """The reverse process's per-step constants, float64, each indexed by t = 0..T (T + 1,).

    Computed in float64 from the betas and only then cast by the caller, as DDPM's code does
    (hojonathanho/diffusion, diffusion_tf/diffusion_utils_2.py, GaussianDiffusion2.__init__;
    the same in openai/improved-diffusion, gaussian_diffusion.py, GaussianDiffusion.__init__):
      alpha_bar                  prod_{s <= t} (1 - beta_s); 1 at t = 0
      beta                       beta_t
      posterior_variance         beta_t (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t); 0 at t = 1
      posterior_variance_clipped the same with its t = 1 entry replaced by the t = 2 one (> 0)
      posterior_log_variance_clipped   log of that: the reference's
                                 `posterior_log_variance_clipped`, the variance of p(x_{t-1}|x_t)
                                 for its fixed-small model (the posterior's), decoder included
      posterior_mean_coef1       beta_t sqrt(alpha_bar_{t-1}) / (1 - alpha_bar_t)      (x_0)
      posterior_mean_coef2       (1 - alpha_bar_{t-1}) sqrt(1 - beta_t) / (1 - alpha_bar_t)  (x_t)
    The reference indexes steps 0..T-1; here entry t is its t - 1, and entry 0 (no step) holds
    alpha_bar = 1 and beta = 0, the t = 1 values for the clipped variance, and 0 otherwise.
    """
    betas = np.asarray(betas, np.float64)
    assert betas.ndim == 1 and betas.shape[0] >= 2 and np.all((betas > 0) & (betas <= 1))
    ab = np.cumprod(1.0 - betas)
    ab_prev = np.append(1.0, ab[:-1])
    var = betas * (1.0 - ab_prev) / (1.0 - ab)
    var_clipped = np.append(var[1], var[1:])
    coef1 = betas * np.sqrt(ab_prev) / (1.0 - ab)
    coef2 = (1.0 - ab_prev) * np.sqrt(1.0 - betas) / (1.0 - ab)
    pad = lambda v, first=0.0: np.concatenate([[first], v])
    return {'alpha_bar': pad(ab, 1.0), 'beta': pad(betas),
            'posterior_variance': pad(var),
            'posterior_variance_clipped': pad(var_clipped, var_clipped[0]),
            'posterior_log_variance_clipped': pad(np.log(var_clipped), np.log(var_clipped[0])),
            'posterior_mean_coef1': pad(coef1), 'posterior_mean_coef2': pad(coef2)}


def decoder_log_variance(tables: dict[str, np.ndarray], kind: str) -> float:
    """log of the variance of the decoder p(x_0 | x_1) = N(x0_hat(x_1), var), float64.

    'posterior_clipped': DDPM's: `_vb_terms_bpd` scores x_0 at t = 1 under the model's
      log-variance, which for its fixed-small (and fixed-large) model is
      `posterior_log_variance_clipped[0]` = log(posterior variance of the step after), i.e. here
      tables['posterior_log_variance_clipped'][1] = log(posterior_variance[2]).
    'beta_1': log(beta_1), the forward process's first-step variance.
    """
    if kind == 'posterior_clipped':
        return float(tables['posterior_log_variance_clipped'][1])
    if kind == 'beta_1':
        return float(np.log(tables['beta'][1]))
    raise ValueError(f'unknown decoder variance {kind!r}; use one of {DECODER_VARIANCES}')
