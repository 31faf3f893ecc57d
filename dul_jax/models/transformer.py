"""The one transformer block of dul_jax: attention, MLP, pre-LayerNorm block, and a scanned stack.

The GPT, the MAE encoder and decoder, and the DiT all use these modules; none has a copy of its own.
Every parameter and activation carries logical axis names (see dul_jax/sharding/mesh.py):
`batch`, `length`, `embed`, `heads`, `kv`, `mlp`, plus `layers` for the scanned stack.
Attention, the projections and GELU run through dul_jax/ops, each op's implementation chosen by
the `kernels` attribute (default: `auto`, the measured-fastest on the backend).
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from dul_jax.models.layers import dense_init, layer_norm
from dul_jax.ops import Kernels
from dul_jax.ops.attention import attention
from dul_jax.ops.gelu import gelu
from dul_jax.ops.matmul import dense_dot_general, matmul

Dtype = Any


class Attention(nn.Module):
    """Multi-head self-attention; the kernel is `kernels.attention` (dul_jax/ops/attention.py).

    With `decode=True` the module keeps a key/value cache (collection `cache`), as long as the
    input it was initialised with, and takes one new position per call, so sampling costs O(T)
    per token, not O(T^2).

    Attributes:
      num_heads: heads; the input width must divide by it (head_dim = embed / num_heads).
      causal: position t attends to positions <= t only (decode mode is causal by the cache).
      dtype: computation dtype.
      decode: one position per call against the key/value cache.
      kernels: each op's implementation (dul_jax/ops).
    """
    num_heads: int
    causal: bool
    dtype: Dtype = jnp.float32
    decode: bool = False
    kernels: Kernels = Kernels()

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """(B, T, embed) -> (B, T, embed); T = 1 per call in decode mode (after init)."""
        # Explicit params and 2-D products rather than nn.DenseGeneral: DenseGeneral initialises a
        # flat 2-D kernel and applies the 4-D logical constraint to it, which fails inside a mesh.
        # Three projections rather than one fused (embed, 3, heads, kv) kernel: each matmul writes
        # its (batch, length, heads, kv) result in the layout attention reads, where slicing a
        # fused output costs transposes and copies (measured in benchmarks/README.md).
        embed = x.shape[-1]
        head_dim = embed // self.num_heads
        q, k, v = (self._project(x, name, head_dim) for name in ('query', 'key', 'value'))
        if self.decode:
            y = self._attend_cached(q, k, v)
        else:
            y = attention(q, k, v, self.causal, impl=self.kernels.attention)
        y = nn.with_logical_constraint(y, ('batch', 'length', 'heads', 'kv'))
        w_out = self.param('out_kernel', nn.with_logical_partitioning(
            nn.initializers.variance_scaling(1.0, 'fan_in', 'normal', in_axis=(0, 1), out_axis=2),
            ('heads', 'kv', 'embed')), (self.num_heads, head_dim, embed))
        b_out = self.param('out_bias', nn.with_logical_partitioning(
            nn.initializers.zeros, ('embed',)), (embed,))
        y = matmul(y, w_out.astype(self.dtype), axes=2, impl=self.kernels.matmul)
        return y + b_out.astype(self.dtype)

    def _project(self, x: jax.Array, name: str, head_dim: int) -> jax.Array:
        """x (B, T, embed) -> (B, T, heads, head_dim) through kernel `{name}_kernel`."""
        shape = (x.shape[-1], self.num_heads, head_dim)
        kernel = self.param(f'{name}_kernel', nn.with_logical_partitioning(
            nn.initializers.variance_scaling(1.0, 'fan_in', 'normal', in_axis=0, out_axis=(1, 2)),
            ('embed', 'heads', 'kv')), shape)
        bias = self.param(f'{name}_bias', nn.with_logical_partitioning(
            nn.initializers.zeros, ('heads', 'kv')), shape[1:])
        y = matmul(x, kernel.astype(self.dtype), impl=self.kernels.matmul) + bias.astype(self.dtype)
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


class Mlp(nn.Module):
    """Dense to `mlp_dim`, GELU, Dense back: (B, T, embed) -> (B, T, embed).

    Attributes: mlp_dim (hidden width), dtype, kernels (each op's implementation, dul_jax/ops).
    """
    mlp_dim: int
    dtype: Dtype = jnp.float32
    kernels: Kernels = Kernels()

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """(..., embed) -> (..., embed)."""
        embed = x.shape[-1]
        dot_general = dense_dot_general(self.kernels.matmul)
        h = nn.Dense(self.mlp_dim, dtype=self.dtype, name='fc', dot_general=dot_general,
                     kernel_init=dense_init(('embed', 'mlp')),
                     bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ('mlp',)))(x)
        h = gelu(h, impl=self.kernels.gelu)
        h = nn.with_logical_constraint(h, ('batch', 'length', 'mlp'))
        return nn.Dense(embed, dtype=self.dtype, name='proj', dot_general=dot_general,
                        kernel_init=dense_init(('mlp', 'embed')),
                        bias_init=nn.with_logical_partitioning(nn.initializers.zeros,
                                                               ('embed',)))(h)


class Block(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(ln(x)), then x + mlp(ln(x)).

    With a condition `cond` (B, C) the block is adaLN-Zero (DiT, Peebles & Xie 2023): the
    LayerNorms lose their own scale and bias, and a Dense of silu(cond), initialised to zero,
    gives each sub-layer a shift, a scale and a gate: x + gate * f(ln(x) * (1 + scale) + shift).
    At initialisation every gate is 0, so the block is the identity.

    Attributes: num_heads, mlp_dim, causal, dropout (rate on each sub-layer's output), dtype,
    decode (see Attention), kernels (each op's implementation, dul_jax/ops).
    """
    num_heads: int
    mlp_dim: int
    causal: bool
    dropout: float = 0.0
    dtype: Dtype = jnp.float32
    decode: bool = False
    kernels: Kernels = Kernels()

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool = True,
                 cond: jax.Array | None = None) -> jax.Array:
        """x: (B, T, embed); cond: (B, C) or None -> (B, T, embed). deterministic=False turns
        dropout on (needs a `dropout` rng)."""
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
                                           self.kernels, name='attn')),
                     ('ln_mlp', Mlp(self.mlp_dim, self.dtype, self.kernels, name='mlp')))
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
        """Block.__call__ as (carry, None)."""
        return super().__call__(x, deterministic, cond), None


class Stack(nn.Module):
    """`num_layers` blocks, scanned so that compile time does not grow with depth.

    Parameters get a leading `layers` axis. `remat` is a key of REMAT_POLICIES: recompute the
    block's activations in the backward pass instead of storing them (memory for compute).
    `cond` (B, C), if given, conditions every block (adaLN-Zero, see Block); it is broadcast, not
    scanned, so all layers see the same vector.

    Attributes: num_layers, num_heads, mlp_dim, causal, dropout, dtype, decode (as Block's),
    remat (a key of REMAT_POLICIES), unroll (layers per scan iteration), kernels.
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
    kernels: Kernels = Kernels()

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool = True,
                 cond: jax.Array | None = None) -> jax.Array:
        """x: (B, T, embed); cond: (B, C) or None -> (B, T, embed)."""
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
                       self.decode, self.kernels, name='blocks')(x, deterministic, cond)
        return x
