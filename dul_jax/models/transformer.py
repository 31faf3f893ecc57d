"""The one transformer block of dul_jax: attention, MLP, pre-LayerNorm block, and a scanned stack.

The GPT, the MAE encoder and decoder, and the DiT all use these modules; none has a copy of its own.
Every parameter and activation carries logical axis names (see dul_jax/sharding/rules.py):
`batch`, `length`, `embed`, `heads`, `kv`, `mlp`, plus `layers` for the scanned stack.
"""

import functools
import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from dul_jax.models.matmul import dense_dot_general, matmul

Dtype = Any


def dense_init(names: tuple[str | None, ...], scale: float = 1.0) -> Callable:
    """Normal init with variance scale/fan_in, tagged with logical axis names."""
    return nn.with_logical_partitioning(
        nn.initializers.variance_scaling(scale, 'fan_in', 'normal'), names)


def layer_norm(dtype: Dtype, name: str | None = None, affine: bool = True) -> nn.LayerNorm:
    """LayerNorm; `affine=False` drops its scale and bias (adaLN supplies them from a condition)."""
    return nn.LayerNorm(
        dtype=dtype, name=name, use_scale=affine, use_bias=affine,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones, ('embed',)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ('embed',)))


def use_cudnn_attention(dtype, length: int) -> bool:
    """cuDNN's fused (flash) attention on NVIDIA GPUs in 16-bit, which never materialises the
    T x T scores; `blocked_attention` everywhere else, and for sequence lengths that are not a
    multiple of 64 (cuDNN refuses some, e.g. MAE's 13 visible tokens)."""
    return (jax.default_backend() == 'gpu' and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16)
            and length % 64 == 0)


CAUSAL_BLOCK = 128


def _query_blocks(length: int, causal: bool) -> list[tuple[int, int, int]]:
    """(start, stop, keys) per query block: causal attention in blocks of CAUSAL_BLOCK queries that
    read only the `keys` first keys (the masked upper triangle is skipped), else one block."""
    count = length // CAUSAL_BLOCK if causal and length % CAUSAL_BLOCK == 0 else 1
    size = length // count
    return [(i * size, (i + 1) * size, (i + 1) * size if causal else length) for i in range(count)]


def _heads_by_depth(x: jax.Array) -> jax.Array:
    """(B, T, H, D) -> (B, H, D, T)."""
    return jnp.transpose(x, (0, 2, 3, 1))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def blocked_attention(q: jax.Array, k: jax.Array, v: jax.Array, causal: bool) -> jax.Array:
    """Softmax attention on (B, T, H, D) inputs, in query blocks (see `_query_blocks`), with a
    hand-written backward pass. Products accumulate in float32 and the softmax runs in float32
    whatever the input dtype; each result is rounded to it once. Reverse-mode differentiation only (it is a
    custom_vjp: no jax.jvp / jacfwd).

    Measured on the 2-core CPU (benchmarks/README.md), each choice here against the plain form:
    - batched matmuls per head, not XLA's attention in (B, T, H, D), and the causal blocks: one
      layer's forward + backward at T = 256 took 44 ms against 109 ms for
      `jax.nn.dot_product_attention`;
    - the exponentials are kept unnormalised with 1 / their row sum: the forward pass divides the
      (T, D) output instead of the (T, T) weights;
    - the backward pass takes the softmax's row term from the output, rowsum(dO * O), a (T, D)
      reduction instead of rowsum(dP * P) over (T, T) (as flash attention does);
    - 4 of its 6 products (1 of 2 forward, 3 of 4 backward) have their left operand contracting
      over its major dimension (Q^T, dO^T, Q, dO_scaled in (.., T, D) against (.., D, T) or
      (.., T, T) right operands): XLA:CPU runs those batched products in Eigen at 90-140
      GFLOP/s, where the same products in the layout YNNPACK takes ran at 64-77.
    """
    return _attention_fwd(q, k, v, causal)[0]


def _attention_fwd(q, k, v, causal):
    length, depth = q.shape[1], q.shape[-1]
    qt = _heads_by_depth(q * jnp.asarray(depth ** -0.5, q.dtype))   # scaled Q^T (B, H, D, T)
    kt = _heads_by_depth(k)
    vh = jnp.swapaxes(v, 1, 2)                                         # (B, H, T, D)
    outputs, weights, inverse_sums = [], [], []
    for start, stop, keys in _query_blocks(length, causal):
        scores = jnp.einsum('bhdq,bhdk->bhqk', qt[..., start:stop], kt[..., :keys],
                            preferred_element_type=jnp.float32)
        if causal:
            visible = jnp.arange(keys)[None, :] <= jnp.arange(start, stop)[:, None]
            scores = jnp.where(visible, scores, -jnp.inf)
        e = jnp.exp(scores - jnp.max(scores, axis=-1, keepdims=True))
        inverse_sum = 1.0 / jnp.sum(e, axis=-1, keepdims=True)
        e = e.astype(v.dtype)
        outputs.append((jnp.matmul(e, vh[:, :, :keys], preferred_element_type=jnp.float32)
                        * inverse_sum).astype(v.dtype))
        weights.append(e)
        inverse_sums.append(inverse_sum)
    out = jnp.concatenate(outputs, axis=2) if len(outputs) > 1 else outputs[0]
    return jnp.swapaxes(out, 1, 2), (qt, kt, vh, out, weights, inverse_sums)


def _attention_bwd(causal, residuals, g):
    qt, kt, vh, out, weights, inverse_sums = residuals
    length, depth = qt.shape[-1], qt.shape[-2]
    g_heads = jnp.swapaxes(g, 1, 2)                                   # dO (B, H, T, D)
    g_t = _heads_by_depth(g)                                           # dO^T (B, H, D, T)
    vt, qh, kh = jnp.swapaxes(vh, 2, 3), jnp.swapaxes(qt, 2, 3), jnp.swapaxes(kt, 2, 3)
    # rowsum(dP * P) = rowsum(dO * O), since dP = dO V^T and O = P V
    row_term = jnp.sum(g_heads.astype(jnp.float32) * out.astype(jnp.float32), -1, keepdims=True)
    dq_blocks, dk_t, dv_t = [], 0, 0
    for (start, stop, keys), e, inverse_sum in zip(_query_blocks(length, causal), weights,
                                                     inverse_sums):
        g_scaled = (g_heads[:, :, start:stop] * inverse_sum).astype(g.dtype)
        dv_block = jnp.einsum('bhqd,bhqk->bhdk', g_scaled, e,           # dV^T for keys [0, keys)
                              preferred_element_type=jnp.float32)
        dp = jnp.einsum('bhdq,bhdk->bhqk', g_t[..., start:stop], vt[..., :keys],
                        preferred_element_type=jnp.float32)
        ds = e * (dp - row_term[:, :, start:stop]) * inverse_sum
        ds = ds.astype(qt.dtype)
        dq_blocks.append(jnp.matmul(ds, kh[:, :, :keys], preferred_element_type=jnp.float32))
        dk_block = jnp.einsum('bhqd,bhqk->bhdk', qh[:, :, start:stop], ds,  # dK^T (scaled q)
                              preferred_element_type=jnp.float32)
        padding = [(0, 0)] * 3 + [(0, length - keys)]
        dv_t = dv_t + jnp.pad(dv_block, padding)
        dk_t = dk_t + jnp.pad(dk_block, padding)
    dq = jnp.concatenate(dq_blocks, axis=2) if len(dq_blocks) > 1 else dq_blocks[0]
    dq = dq * depth ** -0.5
    from_heads_by_depth = (0, 3, 1, 2)
    return (jnp.swapaxes(dq, 1, 2).astype(qt.dtype),
            jnp.transpose(dk_t, from_heads_by_depth).astype(kt.dtype),
            jnp.transpose(dv_t, from_heads_by_depth).astype(vh.dtype))


blocked_attention.defvjp(_attention_fwd, _attention_bwd)


class Attention(nn.Module):
    """Multi-head self-attention: cuDNN's fused attention for 16-bit inputs on NVIDIA GPUs,
    `blocked_attention` otherwise.

    With `decode=True` the module keeps a key/value cache (collection `cache`) of `max_len`
    positions and takes one new position per call, so sampling costs O(T) per token, not O(T^2).
    """
    num_heads: int
    causal: bool
    dtype: Dtype = jnp.float32
    decode: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        # Explicit params and 2-D products rather than nn.DenseGeneral: DenseGeneral initialises a
        # flat 2-D kernel and applies the 4-D logical constraint to it, which fails inside a mesh.
        # Three projections rather than one fused (embed, 3, heads, kv) kernel: each matmul writes
        # its (batch, length, heads, kv) result in the layout attention reads, where slicing a
        # fused output cost transposes and copies worth 20% of a GPT-125M step on an H100.
        embed = x.shape[-1]
        head_dim = embed // self.num_heads
        q, k, v = (self._project(x, name, head_dim) for name in ('query', 'key', 'value'))
        if self.decode:
            y = self._attend_cached(q, k, v)
        elif use_cudnn_attention(q.dtype, q.shape[1]):
            y = jax.nn.dot_product_attention(q, k, v, is_causal=self.causal,
                                             implementation='cudnn')
        else:
            y = blocked_attention(q, k, v, self.causal)
        y = nn.with_logical_constraint(y, ('batch', 'length', 'heads', 'kv'))
        w_out = self.param('out_kernel', nn.with_logical_partitioning(
            nn.initializers.variance_scaling(1.0, 'fan_in', 'normal', in_axis=(0, 1), out_axis=2),
            ('heads', 'kv', 'embed')), (self.num_heads, head_dim, embed))
        b_out = self.param('out_bias', nn.with_logical_partitioning(
            nn.initializers.zeros, ('embed',)), (embed,))
        return matmul(y, w_out.astype(self.dtype), axes=2) + b_out.astype(self.dtype)

    def _project(self, x: jax.Array, name: str, head_dim: int) -> jax.Array:
        """x (B, T, embed) -> (B, T, heads, head_dim) through kernel `{name}_kernel`."""
        shape = (x.shape[-1], self.num_heads, head_dim)
        kernel = self.param(f'{name}_kernel', nn.with_logical_partitioning(
            nn.initializers.variance_scaling(1.0, 'fan_in', 'normal', in_axis=0, out_axis=(1, 2)),
            ('embed', 'heads', 'kv')), shape)
        bias = self.param(f'{name}_bias', nn.with_logical_partitioning(
            nn.initializers.zeros, ('heads', 'kv')), shape[1:])
        y = matmul(x, kernel.astype(self.dtype)) + bias.astype(self.dtype)
        return nn.with_logical_constraint(y, ('batch', 'length', 'heads', 'kv'))

    def _attend_cached(self, q, k, v):
        """Writes this step's key/value at the cache index and attends to positions <= index."""
        is_init = not self.has_variable('cache', 'key')
        cached_key = self.variable('cache', 'key', jnp.zeros, k.shape, k.dtype)
        cached_value = self.variable('cache', 'value', jnp.zeros, v.shape, v.dtype)
        index = self.variable('cache', 'index', lambda: jnp.array(0, jnp.int32))
        if is_init:  # init with a full-length input only sizes the cache
            return jax.nn.dot_product_attention(q, k, v, is_causal=self.causal)
        if q.shape[1] != 1:
            raise ValueError(f'decode mode takes one position per call, got {q.shape[1]}')
        i = index.value
        cached_key.value = jax.lax.dynamic_update_slice_in_dim(cached_key.value, k, i, axis=1)
        cached_value.value = jax.lax.dynamic_update_slice_in_dim(cached_value.value, v, i, axis=1)
        index.value = i + 1
        max_len = cached_key.value.shape[1]
        visible = (jnp.arange(max_len) <= i)[None, None, None, :]  # (1, 1, q=1, k=max_len)
        return jax.nn.dot_product_attention(q, cached_key.value, cached_value.value, mask=visible)


# nn.gelu's tanh approximation: 0.5 x (1 + tanh(u)), u = c (x + 0.044715 x^3)
_GELU_C = math.sqrt(2.0 / math.pi)


@jax.custom_vjp
def gelu_recomputed(x: jax.Array) -> jax.Array:
    """`nn.gelu` (tanh approximation) whose backward pass keeps only its input.

    Plain autodiff keeps tanh(...) as a second (batch, length, mlp) residual: on an H100 at
    GPT-125M the forward fusion writes it and the backward reads it, 2 x 200 MB per layer. Here the
    derivative is recomputed from x, through sigmoid(2u) = (1 + tanh u) / 2 so that XLA cannot CSE
    it with the forward's tanh and save that tensor again.
    """
    return nn.gelu(x)


def _gelu_fwd(x):
    return nn.gelu(x), x


def _gelu_bwd(x, g):
    xf = x.astype(jnp.float32)
    s = jax.nn.sigmoid(2.0 * _GELU_C * (xf + 0.044715 * xf ** 3))  # = 0.5 (1 + tanh u)
    # d/dx [x s(x)] = s + x * 2 s (1 - s) * c (1 + 3 * 0.044715 x^2)
    slope = s * (1.0 + 2.0 * _GELU_C * xf * (1.0 - s) * (1.0 + 3 * 0.044715 * xf * xf))
    return ((g.astype(jnp.float32) * slope).astype(x.dtype),)


gelu_recomputed.defvjp(_gelu_fwd, _gelu_bwd)


class Mlp(nn.Module):
    mlp_dim: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        embed = x.shape[-1]
        h = nn.Dense(self.mlp_dim, dtype=self.dtype, name='fc', dot_general=dense_dot_general,
                     kernel_init=dense_init(('embed', 'mlp')),
                     bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ('mlp',)))(x)
        h = nn.with_logical_constraint(gelu_recomputed(h), ('batch', 'length', 'mlp'))
        return nn.Dense(embed, dtype=self.dtype, name='proj', dot_general=dense_dot_general,
                        kernel_init=dense_init(('mlp', 'embed')),
                        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ('embed',)))(h)


class Block(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(ln(x)), then x + mlp(ln(x)).

    With a condition `cond` (B, C) the block is adaLN-Zero (DiT, Peebles & Xie 2023): the
    LayerNorms lose their own scale and bias, and a Dense of silu(cond), initialised to zero,
    gives each sub-layer a shift, a scale and a gate: x + gate * f(ln(x) * (1 + scale) + shift).
    At initialisation every gate is 0, so the block is the identity.
    """
    num_heads: int
    mlp_dim: int
    causal: bool
    dropout: float = 0.0
    dtype: Dtype = jnp.float32
    decode: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool = True,
                 cond: jax.Array | None = None) -> jax.Array:
        conditioned = cond is not None
        if conditioned:
            mod = nn.Dense(6 * x.shape[-1], dtype=self.dtype, name='adaln',
                           kernel_init=nn.with_logical_partitioning(nn.initializers.zeros,
                                                                    ('embed', 'mlp')),
                           bias_init=nn.with_logical_partitioning(nn.initializers.zeros,
                                                                  ('mlp',)))(nn.silu(cond))
            mod = [m[:, None, :] for m in jnp.split(mod, 6, axis=-1)]
        else:
            mod = [None] * 6
        sublayers = (('ln_attn', Attention(self.num_heads, self.causal, self.dtype, self.decode,
                                           name='attn')),
                     ('ln_mlp', Mlp(self.mlp_dim, self.dtype, name='mlp')))
        for (ln_name, layer), (shift, scale, gate) in zip(sublayers, (mod[:3], mod[3:])):
            h = layer_norm(self.dtype, ln_name, affine=not conditioned)(x)
            if conditioned:
                h = h * (1.0 + scale) + shift
            h = layer(h)
            if conditioned:
                h = gate * h
            x = x + nn.Dropout(self.dropout)(h, deterministic=deterministic)
        return nn.with_logical_constraint(x, ('batch', 'length', 'embed'))


REMAT_POLICIES = {
    'none': None,
    'full': jax.checkpoint_policies.nothing_saveable,
    'dots': jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


class _ScannedBlock(Block):
    """Block with the (carry, output) signature that nn.scan wants."""

    def __call__(self, x, deterministic, cond):
        return super().__call__(x, deterministic, cond), None


class Stack(nn.Module):
    """`num_layers` blocks, scanned so that compile time does not grow with depth.

    Parameters get a leading `layers` axis. `remat` is a key of REMAT_POLICIES: recompute the
    block's activations in the backward pass instead of storing them (memory for compute).
    `cond` (B, C), if given, conditions every block (adaLN-Zero, see Block); it is broadcast, not
    scanned, so all layers see the same vector.
    """
    num_layers: int
    num_heads: int
    mlp_dim: int
    causal: bool
    dropout: float = 0.0
    dtype: Dtype = jnp.float32
    decode: bool = False
    remat: str = 'none'
    unroll: int = 1           # layers per scan iteration; 0 or num_layers: a plain unrolled stack

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool = True,
                 cond: jax.Array | None = None) -> jax.Array:
        block_cls = _ScannedBlock
        if self.remat != 'none':
            block_cls = nn.remat(block_cls, policy=REMAT_POLICIES[self.remat], static_argnums=(2,))
        scanned = nn.scan(
            block_cls,
            variable_axes={'params': 0, 'cache': 0},
            split_rngs={'params': True, 'dropout': True},
            in_axes=nn.broadcast,
            length=self.num_layers,
            unroll=self.unroll or self.num_layers,
            metadata_params={nn.PARTITION_NAME: 'layers'},
        )
        x, _ = scanned(self.num_heads, self.mlp_dim, self.causal, self.dropout, self.dtype,
                       self.decode, name='blocks')(x, deterministic, cond)
        return x
