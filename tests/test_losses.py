import math

import jax
import jax.numpy as jnp
import numpy as np

from dul_jax.losses import likelihood


def test_categorical_nll_matches_hand_computation():
    logits = jnp.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    targets = jnp.array([0, 2])
    z = math.exp(1) + math.exp(2) + math.exp(3)
    expected = [-(1.0 - math.log(z)), math.log(3.0)]
    np.testing.assert_allclose(likelihood.categorical_nll(logits, targets), expected, rtol=1e-6)


def test_categorical_nll_is_stable_for_huge_logits():
    logits = jnp.array([[1e4, 0.0, -1e4]])
    assert float(likelihood.categorical_nll(logits, jnp.array([0]))[0]) == 0.0
    np.testing.assert_allclose(likelihood.categorical_nll(logits, jnp.array([1]))[0], 1e4)


def test_categorical_nll_gradient_is_softmax_minus_one_hot():
    """The plain form under autodiff (the fused kernel is tested against it in test_ops.py); for
    bfloat16 logits the gradient comes back in bfloat16."""
    logits = jax.random.normal(jax.random.key(0), (4, 6, 11)) * 3.0
    targets = jax.random.randint(jax.random.key(1), (4, 6), 0, 11)
    got = jax.grad(lambda z: likelihood.categorical_nll(z, targets).sum())(logits)
    np.testing.assert_allclose(got, jax.nn.softmax(logits) - jax.nn.one_hot(targets, 11),
                               atol=1e-6)
    half = jax.grad(lambda z: likelihood.categorical_nll(z, targets).sum())(
        logits.astype(jnp.bfloat16))
    assert half.dtype == jnp.bfloat16


def test_bits_per_dim_conversions():
    # a uniform model over 256 levels costs exactly 8 bits per dim
    nats_per_image = 784 * math.log(256)
    np.testing.assert_allclose(likelihood.bits_per_dim(nats_per_image, 784), 8.0)
