"""dul_jax/ops: each fast kernel against its plain-JAX `reference` (values and gradients, float32
and bfloat16), the per-op switch, and a GPT that gives the same logits and gradients either way."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from dul_jax import ops
from dul_jax.config import base_config
from dul_jax.errors import UserError
from dul_jax.models.gpt import GPT, shift_right
from dul_jax.ops import Kernels
from dul_jax.ops.attention import attention
from dul_jax.ops.cross_entropy import categorical_nll
from dul_jax.ops.gelu import gelu
from dul_jax.ops.matmul import dense_dot_general, matmul
from dul_jax.ops.positions import add_positions
from dul_jax.sharding.mesh import DEFAULT_RULES

F32 = {'atol': 2e-5, 'rtol': 2e-5}
# bfloat16 keeps 8 bits of mantissa (relative rounding 2^-8 = 0.4%): both forms round their
# results (and attention's reference its intermediates) to it, so they differ by a few ulps.
BF16 = {'atol': 3e-2, 'rtol': 3e-2}
# GELU's reference differentiates in bfloat16 (its tanh residual rounded: slope errors up to
# 0.036 on [-8, 8]); the recomputed slope is computed in float32 (errors below 0.008).
GELU_BF16 = {'atol': 5e-2, 'rtol': 3e-2}


def _inputs(shape, seed, dtype=jnp.float32, scale=1.0):
    # numpy's generator: jax.random would compile a program for every new shape
    return jnp.asarray(scale * np.random.default_rng(seed).standard_normal(shape), dtype)


def _targets(shape, classes, seed=1):
    return jnp.asarray(np.random.default_rng(seed).integers(0, classes, shape), jnp.int32)


def assert_same_values_and_gradients(fast, reference, args, tolerance, argnums=None, jit=True):
    """fast(*args) == reference(*args), and so are their VJPs of one random cotangent (float
    arguments only, compared in float32). Jitted unless jit=False (op-by-op is slow to compile)."""
    argnums = argnums if argnums is not None else tuple(range(len(args)))
    cotangent = _inputs(jax.eval_shape(reference, *args).shape, 99)

    def value_and_vjp(f):
        def run(*diff):
            def partial(*d):
                full = list(args)
                for i, a in zip(argnums, d):
                    full[i] = a
                return f(*full)
            out, pullback = jax.vjp(partial, *diff)
            return out, pullback(cotangent.astype(out.dtype))
        return (jax.jit(run) if jit else run)(*(args[i] for i in argnums))
    (out_fast, got), (out_ref, want) = value_and_vjp(fast), value_and_vjp(reference)
    assert out_fast.dtype == out_ref.dtype and out_fast.shape == out_ref.shape
    for g, w in zip(got, want):
        assert g.dtype == w.dtype, (g.dtype, w.dtype)   # each input's own dtype
    as32 = lambda tree: jax.tree.map(lambda x: x.astype(jnp.float32), tree)
    chex.assert_trees_all_close(as32(out_fast), as32(out_ref), **tolerance)
    chex.assert_trees_all_close(as32(got), as32(want), **tolerance)


# ---- attention ----

@pytest.mark.parametrize('length,causal,dtype,tolerance', [
    (256, True, jnp.float32, F32), (384, True, jnp.float32, F32), (100, True, jnp.float32, F32),
    (100, False, jnp.float32, F32),
    (256, True, jnp.bfloat16, BF16), (100, False, jnp.bfloat16, BF16)])
def test_blocked_attention_matches_reference(length, causal, dtype, tolerance):
    """256 and 384 causal: 2 and 3 query blocks of 128 that skip the masked keys; 100: one block."""
    q, k, v = _inputs((3, 1, length, 2, 16), length, dtype)
    assert_same_values_and_gradients(lambda *a: attention(*a, causal, impl='blocked'),
                                     lambda *a: attention(*a, causal, impl='reference'),
                                     (q, k, v), tolerance)


def test_blocked_attention_in_bfloat16_is_as_accurate_as_the_reference():
    """Mean error against float32, output and gradients: each result rounded to bfloat16 once."""
    q, k, v = _inputs((3, 1, 256, 1, 64), 1)
    weights = _inputs(q.shape, 2)

    def value_and_grads(impl, *qkv):
        attend = lambda *a: attention(*a, True, impl=impl)
        loss = lambda *a: jnp.sum(attend(*a).astype(jnp.float32) * weights)
        grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
        return jax.jit(attend)(*qkv).astype(jnp.float32), *grads(*qkv)
    exact = value_and_grads('reference', q, k, v)
    low = [x.astype(jnp.bfloat16) for x in (q, k, v)]
    ours, theirs = value_and_grads('blocked', *low), value_and_grads('reference', *low)
    for o, t, e in zip(ours, theirs, exact):
        errors = [jnp.abs(x.astype(jnp.float32) - e).mean() for x in (o, t)]
        assert errors[0] <= 1.1 * errors[1]


def test_blocked_attention_gradients_keep_each_input_dtype():
    q, k, v = _inputs((3, 2, 256, 2, 8), 0, jnp.bfloat16)
    grads = jax.jit(jax.grad(lambda *a: attention(*a, True, impl='blocked').sum(),
                             argnums=(0, 1, 2)))(q, k, v.astype(jnp.float32))
    assert [g.dtype for g in grads] == [jnp.bfloat16, jnp.bfloat16, jnp.float32]


def test_blocked_attention_lays_out_four_of_six_products_with_the_lhs_transposed():
    """The layouts measured fastest on XLA:CPU: batched products whose left operand contracts
    over its major dimension (here dimension 2 of (B, H, ., .)) run in Eigen."""
    q, k, v = _inputs((3, 2, 256, 2, 8), 0)
    step = jax.jit(jax.grad(lambda *a: attention(*a, True, impl='blocked').sum(),
                            argnums=(0, 1, 2)))
    hlo = step.lower(q, k, v).compile().as_text()
    dots = [line for line in hlo.splitlines() if ' dot(' in line and 'lhs_batch_dims={0,1}' in line]
    assert len(dots) == 12                                  # 2 query blocks x 6 products
    assert sum('lhs_contracting_dims={2}' in line for line in dots) == 8


def test_attention_auto_resolves_per_backend():
    resolve = ops.attention.resolve
    assert resolve('auto', jnp.bfloat16, 256, 'gpu') == 'cudnn'
    assert resolve('auto', jnp.bfloat16, 13, 'gpu') == 'blocked'   # cuDNN refuses some lengths
    assert resolve('auto', jnp.float32, 256, 'gpu') == 'blocked'
    assert resolve('auto', jnp.bfloat16, 256, 'cpu') == 'blocked'
    assert resolve('auto', jnp.bfloat16, 256, 'tpu') == 'reference'
    assert resolve('reference', jnp.bfloat16, 256, 'gpu') == 'reference'
    with pytest.raises(ValueError, match='attention impl must be one of'):
        resolve('flash', jnp.float32, 256)


@pytest.mark.parametrize('causal', [True, False])
def test_splash_attention_in_interpret_mode_matches_reference(causal):
    """The TPU kernel run by Pallas's interpreter on the CPU, forward and its custom VJP; 128 is
    the shortest length it takes."""
    q, k, v = _inputs((3, 2, 128, 2, 64), 7)
    assert_same_values_and_gradients(lambda *a: ops.attention.splash(*a, causal, interpret=True),
                                     lambda *a: attention(*a, causal, impl='reference'),
                                     (q, k, v), F32)


def test_splash_attention_refuses_other_backends_and_lengths():
    q = jnp.zeros((1, 128, 1, 8))
    with pytest.raises(UserError, match='splash runs on TPUs only, not on cpu'):
        attention(q, q, q, True, impl='splash')
    q = jnp.zeros((1, 100, 1, 8))
    with pytest.raises(UserError, match='multiple of 128, got 100'):
        ops.attention.splash(q, q, q, True, interpret=True)


def test_splash_attention_compiles_for_a_tpu_mesh():
    """Ahead of time for 4 TPU v5e chips (libtpu compiles on this host): under the mesh the kernel
    runs in a shard_map over the batch axis, forward and backward, with no collectives."""
    pytest.importorskip('libtpu', reason='compiling for a TPU topology needs libtpu')
    from jax.experimental import topologies
    topology = topologies.get_topology_desc(platform='tpu', topology_name='v5e:2x2')
    mesh = jax.make_mesh((4, 1, 1), ('data', 'fsdp', 'tensor'), devices=topology.devices,
                         axis_types=(jax.sharding.AxisType.Auto,) * 3)
    x = jax.ShapeDtypeStruct((8, 256, 4, 128), jnp.bfloat16,
                             sharding=NamedSharding(mesh, PartitionSpec(('data', 'fsdp'))))
    loss = lambda *a: attention(*a, causal=True, impl='splash').astype(jnp.float32).sum()
    with jax.set_mesh(mesh), nn.logical_axis_rules(DEFAULT_RULES):
        assert ops.attention.resolve('auto', jnp.bfloat16, 256) == 'reference'   # not the host's
        hlo = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(x, x, x).compile().as_text()
    kernels = [line for line in hlo.splitlines() if 'custom_call_target="tpu_custom_call"' in line]
    assert len(kernels) == 3                       # forward, dK/dV and dQ kernels
    assert all('bf16[2,4,256,128]' in line for line in kernels)   # one device's 8 / 4 sequences
    assert not any(op in hlo for op in ('all-gather', 'all-reduce', 'all-to-all'))


# ---- matmul ----

@pytest.mark.parametrize('k,n,dtype,tolerance', [  # x or g is the smaller one to transpose
    (8, 24, jnp.float32, F32), (24, 8, jnp.float32, F32), (24, 8, jnp.bfloat16, BF16)])
def test_transposed_backward_matmul_matches_reference(k, n, dtype, tolerance):
    x, w = _inputs((2, 40, k), 0, dtype), _inputs((k, n), 1, dtype)
    assert_same_values_and_gradients(lambda *a: matmul(*a, impl='transposed_backward'),
                                      lambda *a: matmul(*a, impl='reference'), (x, w), tolerance)


def test_transposed_backward_matmul_over_two_axes_matches_reference():
    x, w = _inputs((2, 5, 3, 4), 0), _inputs((3, 4, 6), 1)   # attention's output projection
    assert_same_values_and_gradients(lambda *a: matmul(*a, axes=2, impl='transposed_backward'),
                                     lambda *a: matmul(*a, axes=2, impl='reference'), (x, w), F32)


@pytest.mark.parametrize('k,n', [(8, 24), (24, 8)])
def test_transposed_backward_puts_every_dot_on_the_lhs_minor_dim(k, n):
    """XLA:CPU hands YNNPACK only dots whose left operand contracts over its minor dimension."""
    x, w = _inputs((2, 40, k), 0), _inputs((k, n), 1)
    grad = jax.grad(lambda *a: jnp.sum(jnp.sin(matmul(*a, impl='transposed_backward'))),
                    argnums=(0, 1))
    dots = [line for line in jax.jit(grad).lower(x, w).compile().as_text().splitlines()
            if ' dot(' in line]
    assert len(dots) == 3
    assert all('lhs_contracting_dims={1}' in line for line in dots), dots


@pytest.mark.parametrize('impl', ['reference', 'transposed_backward'])
def test_dense_dot_general_is_nn_dense(impl):
    x = _inputs((2, 5, 8), 0)
    plain, ours = nn.Dense(6), nn.Dense(6, dot_general=dense_dot_general(impl))
    params = plain.init(jax.random.key(0), x)
    chex.assert_trees_all_close(ours.apply(params, x), plain.apply(params, x), **F32)
    assert dense_dot_general(impl) is dense_dot_general(impl)   # one function per impl
    with pytest.raises(ValueError, match='last axis of x with the first'):
        dense_dot_general(impl)(jnp.ones((2, 3)), jnp.ones((2, 4)), (((0,), (0,)), ((), ())))


# ---- GELU, positions, cross-entropy ----

class GeluTest(chex.TestCase):
    """The same comparison jitted and not (chex variants)."""

    @chex.variants(with_jit=True, without_jit=True)
    def test_gelu_recomputed_matches_reference(self):
        x = jnp.linspace(-8.0, 8.0, 4001)
        fast = self.variant(lambda v: gelu(v, impl='recomputed'))
        ref = self.variant(lambda v: gelu(v, impl='reference'))
        np.testing.assert_array_equal(fast(x), ref(x))   # the same forward
        # float32 rounding of either form of the derivative
        assert_same_values_and_gradients(fast, ref, (x,), {'atol': 2e-5, 'rtol': 1e-5}, jit=False)
        assert_same_values_and_gradients(fast, ref, (x.astype(jnp.bfloat16),), GELU_BF16,
                                         jit=False)


def test_ones_matmul_positions_match_reference():
    fast = lambda x, t: add_positions(x, t, impl='ones_matmul')
    ref = lambda x, t: add_positions(x, t, impl='reference')
    x, table = _inputs((3, 5, 4), 0), _inputs((5, 4), 1)
    assert_same_values_and_gradients(fast, ref, (x, table), {'atol': 1e-6, 'rtol': 1e-6})
    assert_same_values_and_gradients(fast, ref, (x.astype(jnp.bfloat16), table), BF16)


def test_fused_cross_entropy_matches_reference():
    fast = lambda z, t: categorical_nll(z, t, impl='fused')
    ref = lambda z, t: categorical_nll(z, t, impl='reference')
    logits = _inputs((4, 6, 11), 0, scale=3.0)
    targets = _targets((4, 6), 11)
    assert jax.eval_shape(fast, logits.astype(jnp.bfloat16), targets).dtype == jnp.float32
    assert_same_values_and_gradients(fast, ref, (logits, targets), {'atol': 1e-6, 'rtol': 1e-5},
                                     argnums=(0,))
    assert_same_values_and_gradients(fast, ref, (logits.astype(jnp.bfloat16), targets), BF16,
                                     argnums=(0,))


def test_fused_cross_entropy_gradient_is_softmax_minus_one_hot():
    logits = _inputs((4, 6, 11), 0, scale=3.0)
    targets = _targets((4, 6), 11)
    got = jax.jit(jax.grad(lambda z: categorical_nll(z, targets, impl='fused').sum()))(logits)
    want = jax.nn.softmax(np.asarray(logits)) - np.eye(11)[np.asarray(targets)]
    chex.assert_trees_all_close(got, want, atol=1e-6)


# ---- the switch ----

def test_kernels_from_config_and_validate():
    cfg = base_config()
    assert Kernels.from_config(cfg.ops) == Kernels()
    cfg.ops.attention = 'reference'
    assert Kernels.from_config(cfg.ops) == Kernels(attention='reference')
    assert hash(Kernels.reference()) == hash(Kernels.from_config({op: 'reference'
                                                                  for op in ops.IMPLS}))
    cfg.ops.attention = 'x'
    with pytest.raises(UserError, match=r'^ops.attention must be one of auto, reference, blocked, '
                                        r'cudnn, splash, got "x".$'):
        ops.validate(cfg.ops)
    with pytest.raises(UserError, match='ops.gelu must be one of auto, reference, recomputed'):
        Kernels(gelu='blocked')
    with pytest.raises(UserError, match='ops.softmax is not an op'):
        Kernels.from_config({'softmax': 'auto'})


def test_resolved_names_what_auto_runs():
    assert ops.resolved(backend='cpu') == {
        'attention': 'blocked', 'matmul': 'transposed_backward', 'gelu': 'recomputed',
        'positions': 'reference', 'cross_entropy': 'reference'}
    assert ops.resolved(backend='gpu', dtype=jnp.bfloat16) == {
        'attention': 'cudnn (length % 64 == 0), else blocked', 'matmul': 'reference',
        'gelu': 'recomputed', 'positions': 'ones_matmul', 'cross_entropy': 'fused'}
    assert ops.resolved(backend='tpu')['attention'] == 'reference'
    assert set(ops.resolved(Kernels.reference(), backend='tpu').values()) == {'reference'}


# ---- a model built either way ----

FAST = Kernels(attention='blocked', matmul='transposed_backward', gelu='recomputed',
                positions='ones_matmul', cross_entropy='fused')


@pytest.mark.integration
def test_gpt_gives_the_same_logits_and_gradients_with_reference_kernels():
    """The default and every fast path at once against plain JAX: each choice is passed down to
    where it runs (the logits, the loss and every parameter's gradient agree)."""
    length, vocab = 64, 13
    tokens = _targets((2, length), vocab, seed=0)
    inputs = shift_right(tokens, vocab)
    models = [GPT(vocab_size=vocab, max_len=length, num_layers=1, num_heads=2, embed_dim=16,
                  mlp_dim=32, kernels=kernels)
              for kernels in (Kernels.reference(), Kernels(), FAST)]
    # random values of the parameters' shapes (eval_shape: no init program to compile)
    shapes = nn.meta.unbox(jax.eval_shape(models[0].init, jax.random.key(1), inputs))['params']
    leaves, tree = jax.tree.flatten(shapes)
    params = tree.unflatten([_inputs(x.shape, i, scale=0.5) for i, x in enumerate(leaves)])

    def loss(model, p):
        logits = model.apply({'params': p}, inputs)
        nll = categorical_nll(logits, tokens, impl=model.kernels.cross_entropy)
        return nll.mean(), logits
    traced = [jax.jit(jax.value_and_grad(lambda p, m=m: loss(m, p), has_aux=True)).trace(params)
              for m in models]
    (_, want_logits), want_grads = traced[0].lower().compile()(params)
    for t in traced[1:]:
        (_, logits), grads = t.lower().compile()(params)
        chex.assert_trees_all_close(logits, want_logits, **F32)
        chex.assert_trees_all_close(grads, want_grads, atol=1e-6, rtol=1e-4)
    # and they really ran different code: one hand-written VJP per op in FAST, none in reference
    jaxprs = [str(t.jaxpr) for t in traced]
    assert jaxprs[0].count('custom_vjp_call') == 0
    assert 'custom_vjp_call' in jaxprs[1]
    assert jaxprs[2].count('custom_vjp_call') >= 5
