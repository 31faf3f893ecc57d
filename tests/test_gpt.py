"""The autoregressive Transformer: causality, KV-cache decoding, conditioning, sampling."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dul_jax.models.gpt import GPT, shift_right
from dul_jax.sampling import sample_logits

VOCAB, LENGTH = 17, 12


@pytest.fixture(scope='module')
def model_and_params():
    model = GPT(vocab_size=VOCAB, max_len=LENGTH, num_layers=2, num_heads=2, embed_dim=32,
                mlp_dim=64, num_classes=3)
    tokens = jnp.zeros((2, LENGTH), jnp.int32)
    params = nn.meta.unbox(model.init(jax.random.key(0), tokens, jnp.zeros(2, jnp.int32)))['params']
    return model, params


def _tokens(seed, batch=2):
    return jax.random.randint(jax.random.key(seed), (batch, LENGTH), 0, VOCAB)


@pytest.mark.integration
def test_future_tokens_never_change_earlier_logits(model_and_params):
    model, params = model_and_params
    labels = jnp.array([0, 1])
    x = _tokens(1)
    forward = jax.jit(lambda tokens: model.apply({'params': params}, shift_right(tokens, VOCAB),
                                                  labels))
    base = forward(x)
    for t in range(LENGTH - 1):
        logits = forward(x.at[:, t].set((x[:, t] + 1) % VOCAB))
        # logits[:, s] predicts token s from tokens < s: unchanged for s <= t, changed after
        np.testing.assert_array_equal(logits[:, :t + 1], base[:, :t + 1])
        assert np.abs(logits[:, t + 1:] - base[:, t + 1:]).max() > 1e-4


@pytest.mark.integration
def test_gradient_of_each_logit_reaches_only_earlier_inputs(model_and_params):
    # Row s of pos_embed is added to the input at position s only, so its gradient is the
    # gradient with respect to that input: it must vanish for every s after t, and not before.
    model, params = model_and_params
    inputs = shift_right(_tokens(2, batch=1), VOCAB)

    def logit_sums(pos_embed):  # (LENGTH,): the summed logits at each position
        p = dict(params, pos_embed=pos_embed)
        return model.apply({'params': p}, inputs, jnp.array([2]))[0].sum(axis=-1)

    jac = jax.jit(jax.jacrev(logit_sums))(params['pos_embed'])  # (t, s, D)
    reach = np.abs(np.asarray(jac)).sum(axis=-1)
    assert np.all(np.triu(reach, k=1) == 0.0)        # no path from s > t
    assert np.all(reach[np.tril_indices(LENGTH)] > 0.0)  # a path from every s <= t


@pytest.mark.integration
def test_kv_cache_decoding_matches_full_forward(model_and_params):
    model, params = model_and_params
    labels = jnp.array([0, 2])
    inputs = shift_right(_tokens(3), VOCAB)
    full = model.apply({'params': params}, inputs, labels)
    decoder = model.clone(decode=True)
    cache = decoder.init(jax.random.key(0), inputs, labels)['cache']
    step = jax.jit(lambda c, tok: decoder.apply({'params': params, 'cache': c}, tok, labels,
                                                mutable=['cache']))
    steps = []
    for t in range(LENGTH):
        logits, updated = step(cache, inputs[:, t:t + 1])
        cache = updated['cache']
        steps.append(logits)
    np.testing.assert_allclose(jnp.concatenate(steps, axis=1), full, atol=2e-5)


@pytest.mark.integration
def test_class_label_changes_the_prediction(model_and_params):
    model, params = model_and_params
    inputs = shift_right(_tokens(4, batch=1), VOCAB)
    a = model.apply({'params': params}, inputs, jnp.array([0]))
    b = model.apply({'params': params}, inputs, jnp.array([1]))
    assert np.abs(a - b).max() > 1e-4


def test_sample_logits_greedy_and_top_k():
    logits = jnp.array([[0.0, 3.0, 1.0, 2.0]] * 500)
    assert (sample_logits(jax.random.key(0), logits, temperature=0.0) == 1).all()
    assert (sample_logits(jax.random.key(0), logits, top_k=1) == 1).all()
    drawn = np.asarray(sample_logits(jax.random.key(1), logits, top_k=2))
    assert set(drawn.tolist()) == {1, 3}
    drawn = np.asarray(sample_logits(jax.random.key(1), logits))
    assert set(drawn.tolist()) == {0, 1, 2, 3}


class ForwardVariantsTest(chex.TestCase):
    """The model jitted and not (chex variants), and its shape checks at the boundary."""

    def setUp(self):
        super().setUp()
        self.model = GPT(vocab_size=VOCAB, max_len=LENGTH, num_layers=1, num_heads=2,
                         embed_dim=16, mlp_dim=32)
        self.params = nn.meta.unbox(self.model.init(
            jax.random.key(0), jnp.zeros((2, LENGTH), jnp.int32)))['params']

    @chex.variants(with_jit=True, without_jit=True)
    def test_logits_are_causal_in_both_variants(self):
        forward = self.variant(lambda tokens: self.model.apply({'params': self.params}, tokens))
        x = _tokens(4)
        base = forward(x)
        chex.assert_shape(base, (2, LENGTH, VOCAB))
        changed = forward(x.at[:, 5].set((x[:, 5] + 1) % VOCAB))
        np.testing.assert_allclose(changed[:, :5], base[:, :5], atol=1e-6)
        assert np.abs(changed[:, 5:] - base[:, 5:]).max() > 1e-4

    def test_a_wrongly_shaped_input_is_refused_at_the_boundary(self):
        with pytest.raises(AssertionError, match='rank'):
            self.model.apply({'params': self.params}, jnp.zeros((LENGTH,), jnp.int32))


@pytest.mark.parametrize('remat', ['dots', 'full'])
@pytest.mark.integration
def test_remat_gives_the_same_loss_and_gradients(model_and_params, remat):
    model, params = model_and_params
    recomputing = model.clone(remat=remat)
    x, labels = _tokens(2), jnp.array([2, 0])

    def loss(module):
        def f(p):
            logits = module.apply({'params': p}, shift_right(x, VOCAB), labels)
            return jnp.mean(jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(
                logits, x[..., None], -1)[..., 0])
        return jax.jit(jax.value_and_grad(f))(params)

    chex.assert_trees_all_close(loss(recomputing), loss(model), rtol=1e-5, atol=1e-6)
