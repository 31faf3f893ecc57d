"""Learning-rate schedules: the warmup-stable-decay ('wsd') shapes and their cooldown branches."""

import math

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from dul_jax import config as config_lib
from dul_jax.errors import UserError
from dul_jax.train.optim import learning_rate_schedule, make_group_optimizers

LR, RATIO, WARMUP, T = 0.01, 0.1, 10, 100
SHAPES = {'linear': lambda p: 1 - p, 'cosine': lambda p: (1 + math.cos(math.pi * p)) / 2,
          '1-sqrt': lambda p: 1 - math.sqrt(p)}


def optim(**overrides):
    o = config_lib.base_config().optim
    o.update({'lr': LR, 'min_lr_ratio': RATIO, 'warmup_steps': WARMUP, 'schedule': 'wsd',
              **overrides})
    return o


def values(optim_cfg, total_steps=T, upto=None):
    """The schedule at counts 0..upto (total_steps + 5 by default), as float64."""
    schedule = learning_rate_schedule(optim_cfg, total_steps)
    return np.asarray(schedule(jnp.arange((upto or total_steps + 5) + 1)), np.float64)


@pytest.mark.parametrize('shape', SHAPES)
def test_wsd_warms_up_holds_then_decays_to_the_floor(shape):
    lr = values(optim(decay_shape=shape, decay_fraction=0.2))
    start = T - 20
    np.testing.assert_allclose(lr[:WARMUP + 1], LR * np.arange(WARMUP + 1) / WARMUP, rtol=1e-6)
    np.testing.assert_allclose(lr[WARMUP:start + 1], LR, rtol=1e-6)   # the stable phase
    assert lr[start + 1] < LR                                         # the decay starts there
    assert np.all(np.diff(lr[start:]) <= 1e-9)                        # and never rises
    np.testing.assert_allclose(lr[T:], LR * RATIO, rtol=1e-5)         # the floor, at T and after
    assert lr[T - 1] > LR * RATIO                                     # the last update's lr
    np.testing.assert_allclose(lr[start + 10], LR * (RATIO + (1 - RATIO) * SHAPES[shape](0.5)),
                               rtol=1e-5)                             # the decay's midpoint
    for s in (1, 7, 13, 19):                                          # and its closed form
        np.testing.assert_allclose(
            lr[start + s], LR * (RATIO + (1 - RATIO) * SHAPES[shape](s / 20)), rtol=1e-5)


def test_midpoints_name_the_shapes():
    # halfway for linear and cosine, 1 - sqrt(0.5) of the way (0.293) for 1-sqrt
    mid = {s: values(optim(decay_shape=s, min_lr_ratio=0.0))[T - 10] / LR for s in SHAPES}
    np.testing.assert_allclose([mid['linear'], mid['cosine'], mid['1-sqrt']],
                               [0.5, 0.5, 1 - math.sqrt(0.5)], rtol=1e-5)


def test_decay_steps_overrides_the_fraction_and_zero_never_decays():
    lr = values(optim(decay_steps=30, decay_fraction=0.5))
    np.testing.assert_allclose(lr[WARMUP:T - 30 + 1], LR, rtol=1e-6)
    assert lr[T - 29] < LR
    stable = values(optim(decay_fraction=0.0), upto=3 * T)
    np.testing.assert_allclose(stable[WARMUP:], LR, rtol=1e-6)


@pytest.mark.parametrize('shape', SHAPES)
def test_a_cooldown_branch_is_the_stable_run_then_a_fresh_decay(shape):
    d, long = 15, 1000
    stable = values(optim(decay_fraction=0.0), long, upto=long)
    for k in (40, 85, 300):   # branch at step k: k + d steps, decaying over the last d
        branch = values(optim(decay_shape=shape, decay_steps=d), k + d, upto=k + d)
        np.testing.assert_allclose(branch[:k + 1], stable[:k + 1], rtol=1e-6)
        # every step >= T - d of any WSD with the same decay: only the distance from T - d counts
        fresh = values(optim(decay_shape=shape, decay_steps=d), T, upto=T)
        np.testing.assert_allclose(branch[k:], fresh[T - d:], rtol=1e-6)


def test_zero_warmup_starts_at_lr_and_a_full_decay_has_no_stable_phase():
    lr = values(optim(warmup_steps=0, decay_fraction=1.0, decay_shape='linear'))
    np.testing.assert_allclose(lr[:T + 1], LR * (1 - (1 - RATIO) * np.arange(T + 1) / T),
                               rtol=1e-5)


def test_group_optimizers_keep_their_own_wsd_schedules():
    o = optim(decay_fraction=0.5)
    o.groups = ml_collections.ConfigDict({'d': {'lr': 2 * LR}})
    _, schedules = make_group_optimizers(o, T, ('g', 'd'))
    assert float(schedules['g'](T // 4)) == pytest.approx(LR)
    assert float(schedules['d'](T // 4)) == pytest.approx(2 * LR)
    assert float(schedules['d'](T)) == pytest.approx(2 * LR * RATIO)


@pytest.mark.parametrize('overrides, fragment', [
    ({'schedule': 'wsdd'}, 'optim.schedule must be "cosine", "constant" or "wsd", got "wsdd"'),
    ({'decay_shape': 'sqrt'}, 'optim.decay_shape must be "linear", "cosine" or "1-sqrt"'),
    ({'decay_fraction': 1.5}, r'optim.decay_fraction must be in \[0, 1\], got 1.5'),
    ({'decay_fraction': -0.1}, r'optim.decay_fraction must be in \[0, 1\]'),
    ({'decay_steps': -1}, 'optim.decay_steps must be >= 0'),
    ({'decay_steps': 91}, 'optim.warmup_steps=10 plus 91 decay steps exceed train.steps=100'),
    ({'decay_fraction': 0.95}, 'optim.warmup_steps=10 plus 95 decay steps exceed'),
])
def test_bad_schedule_settings_are_refused(overrides, fragment):
    with pytest.raises(UserError, match=fragment):
        learning_rate_schedule(optim(**overrides), T)
    cfg = config_lib.base_config()
    cfg.train.steps = T
    cfg.optim = optim(**overrides)
    with pytest.raises(UserError, match=fragment):
        config_lib.validate_common(cfg)


def test_cosine_and_constant_are_unchanged_and_do_not_check_wsd_fit():
    # tiny runs keep the silently clipped warmup of the other schedules
    cos = values(optim(schedule='cosine', warmup_steps=100), 10, upto=10)
    assert cos[0] == 0 and cos[9] > cos[10] == pytest.approx(LR * RATIO)
    const = values(optim(schedule='constant'), T)
    np.testing.assert_allclose(const[WARMUP:], LR, rtol=1e-6)
