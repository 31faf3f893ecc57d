"""The autoregressive Transformer: causality, KV-cache decoding, conditioning, sampling."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dul_jax.models.gpt import GPT, add_positions, shift_right
from dul_jax.models.matmul import dense_dot_general, matmul
from dul_jax.models.transformer import blocked_attention, gelu_recomputed
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


@pytest.mark.parametrize('length,causal', [(256, True), (384, True), (64, True), (100, False)])
def test_blocked_attention_equals_jax_attention_values_and_gradients(length, causal):
    """Query blocks of 128 that skip masked keys compute the same function as the plain kind."""
    q, k, v = jax.random.normal(jax.random.key(length), (3, 2, length, 3, 16))

    def loss(attend, *qkv):
        return jnp.sum(jnp.sin(attend(*qkv)))
    ours = lambda q, k, v: blocked_attention(q, k, v, causal)
    theirs = lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=causal)
    np.testing.assert_allclose(ours(q, k, v), theirs(q, k, v), atol=2e-5)
    grads = [jax.grad(loss, argnums=(1, 2, 3))(f, q, k, v) for f in (ours, theirs)]
    for a, b in zip(*grads):
        np.testing.assert_allclose(a, b, atol=2e-5)


# ---- hand-written gradients (for GPU memory traffic) against autodiff of the plain forms ----

def test_position_add_gradient_is_the_batch_sum():
    x, table = jax.random.normal(jax.random.key(0), (3, 5, 4)), jnp.arange(20.0).reshape(5, 4)
    weights = jax.random.normal(jax.random.key(1), (3, 5, 4))

    def loss(add, x, table):
        return jnp.sum(jnp.sin(add(x, table)) * weights)
    got = jax.grad(lambda *a: loss(add_positions, *a), argnums=(0, 1))(x, table)
    want = jax.grad(lambda *a: loss(lambda x, t: x + t[None], *a), argnums=(0, 1))(x, table)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-6)


def test_gelu_recomputed_matches_gelu_and_its_autodiff_gradient():
    x = jnp.linspace(-8.0, 8.0, 4001)
    np.testing.assert_array_equal(gelu_recomputed(x), nn.gelu(x))
    got = jax.vmap(jax.grad(gelu_recomputed))(x)
    want = jax.vmap(jax.grad(nn.gelu))(x)
    np.testing.assert_allclose(got, want, atol=5e-6)    # float32 rounding of either form
    # bfloat16 in, bfloat16 gradient out (computed in float32)
    assert jax.grad(lambda v: gelu_recomputed(v).sum())(x.astype(jnp.bfloat16)).dtype == \
        jnp.bfloat16


@pytest.mark.parametrize('k,n', [(8, 24), (24, 8)])  # x or g is the smaller one to transpose
def test_matmul_gradients_match_autodiff_and_every_dot_contracts_the_lhs_minor_dim(k, n):
    x = jax.random.normal(jax.random.key(0), (2, 40, k))
    w = jax.random.normal(jax.random.key(1), (k, n))

    def loss(product, x, w):
        return jnp.sum(jnp.sin(product(x, w)))
    got = jax.grad(lambda *a: loss(matmul, *a), argnums=(0, 1))
    want = jax.grad(lambda *a: loss(jnp.matmul, *a), argnums=(0, 1))(x, w)
    for g, ref in zip(got(x, w), want):
        np.testing.assert_allclose(g, ref, rtol=1e-5, atol=1e-5)
    # XLA:CPU hands YNNPACK only dots whose left operand contracts over its minor dimension
    hlo = jax.jit(got).lower(x, w).compile().as_text()
    dots = [line for line in hlo.splitlines() if ' dot(' in line]
    assert len(dots) == 3
    assert all('lhs_contracting_dims={1}' in line for line in dots), dots


def test_dense_dot_general_refuses_other_contractions():
    with pytest.raises(ValueError, match='last axis of x with the first'):
        dense_dot_general(jnp.ones((2, 3)), jnp.ones((2, 4)), (((0,), (0,)), ((), ())))


def test_blocked_attention_lays_out_four_of_six_products_with_the_lhs_transposed():
    """The layouts its docstring measured: on XLA:CPU, batched products whose left operand
    contracts over its major dimension (here dimension 2 of (B, H, ., .)) run in Eigen."""
    q, k, v = jax.random.normal(jax.random.key(0), (3, 2, 256, 2, 8))
    step = jax.jit(jax.grad(lambda *a: blocked_attention(*a, True).sum(), argnums=(0, 1, 2)))
    hlo = step.lower(q, k, v).compile().as_text()
    dots = [line for line in hlo.splitlines() if ' dot(' in line and 'lhs_batch_dims={0,1}' in line]
    assert len(dots) == 12                                  # 2 query blocks x 6 products
    assert sum('lhs_contracting_dims={2}' in line for line in dots) == 8


def test_blocked_attention_in_bfloat16_is_as_accurate_as_jax_attention():
    """Mean error against float32, output and gradients: each result rounded to bfloat16 once."""
    q, k, v = jax.random.normal(jax.random.key(1), (3, 2, 256, 2, 64))
    weights = jax.random.normal(jax.random.key(2), q.shape)

    def value_and_grads(attend, *qkv):
        loss = lambda *a: jnp.sum(attend(*a).astype(jnp.float32) * weights)
        return attend(*qkv).astype(jnp.float32), *jax.grad(loss, argnums=(0, 1, 2))(*qkv)
    jax_attention = lambda *a: jax.nn.dot_product_attention(*a, is_causal=True)
    exact = value_and_grads(jax_attention, q, k, v)
    low = [x.astype(jnp.bfloat16) for x in (q, k, v)]
    ours = value_and_grads(lambda *a: blocked_attention(*a, True), *low)
    theirs = value_and_grads(jax_attention, *low)
    for o, t, e in zip(ours, theirs, exact):
        errors = [jnp.abs(x.astype(jnp.float32) - e).mean() for x in (o, t)]
        assert errors[0] <= 1.1 * errors[1]


def test_blocked_attention_gradients_keep_each_input_dtype():
    q, k, v = jax.random.normal(jax.random.key(0), (3, 2, 256, 2, 8)).astype(jnp.bfloat16)
    grads = jax.grad(lambda *a: blocked_attention(*a, True).astype(jnp.float32).sum(),
                     argnums=(0, 1, 2))(q, k, v.astype(jnp.float32))
    assert [g.dtype for g in grads] == [jnp.bfloat16, jnp.bfloat16, jnp.float32]
