"""Decoder-only Transformer (GPT on bytes and characters, iGPT on pixels in raster order)."""

from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from dul_jax.models.layers import dense_init, layer_norm
from dul_jax.models.transformer import Stack
from dul_jax.ops import Kernels
from dul_jax.ops.matmul import dense_dot_general
from dul_jax.ops.positions import add_positions


def shift_right(tokens: jax.Array, bos: int) -> jax.Array:
    """Model inputs for next-token prediction: [bos, x_0, ..., x_{T-2}] for targets x_0..x_{T-1}."""
    start = jnp.full(tokens.shape[:-1] + (1,), bos, tokens.dtype)
    return jnp.concatenate([start, tokens[..., :-1]], axis=-1)


class GPT(nn.Module):
    """p(x_t | x_<t [, class]) over `vocab_size` symbols, with an extra start symbol `vocab_size`.

    Inputs are (B, T) ids already shifted right (see `shift_right`); output logits
    (B, T, vocab_size) in float32, where logits[:, t] predicts target t. With `decode=True` each
    call takes one position (B, 1) and the position counter and key/value caches live in the
    `cache` collection (`init` with a full-length (B, T) input sizes them).

    Attributes:
      vocab_size: number of data symbols; id vocab_size is the start symbol (`bos`).
      max_len: longest sequence (rows of the learned position table).
      num_layers, num_heads, embed_dim, mlp_dim: the transformer's size.
      num_classes: 0 for unconditional; else a learned class embedding added to every position.
      dropout: rate on the embeddings and inside the blocks (when deterministic=False).
      dtype: computation dtype (the logits are float32 regardless).
      remat: a key of transformer.REMAT_POLICIES.
      scan_unroll: layers per scan step; 0 = all (see Stack).
      decode: one position per call with key/value caches (sampling).
      kernels: each op's implementation (dul_jax/ops).
    """
    vocab_size: int
    max_len: int
    num_layers: int
    num_heads: int
    embed_dim: int
    mlp_dim: int
    num_classes: int = 0
    dropout: float = 0.0
    dtype: Any = jnp.float32
    remat: str = 'none'
    scan_unroll: int = 0      # layers per scan step; 0 = all (see Stack)
    decode: bool = False
    kernels: Kernels = Kernels()  # each op's implementation (dul_jax/ops)

    @property
    def bos(self) -> int:
        """The start-of-sequence id, `vocab_size` (one past the data symbols)."""
        return self.vocab_size

    @nn.compact
    def __call__(self, inputs: jax.Array, labels: jax.Array | None = None,
                 deterministic: bool = True) -> jax.Array:
        """Next-token logits.

        Args:
          inputs: (B, T) int ids in [0, vocab_size] (bos included), T <= max_len; (B, 1) per
            call in decode mode.
          labels: (B,) ints in [0, num_classes), required iff num_classes > 0.
          deterministic: False turns dropout on (needs a `dropout` rng).

        Returns:
          (B, T, vocab_size) float32 logits; logits[:, t] predicts the symbol after inputs[:, t].
        """
        chex.assert_rank(inputs, 2)
        if labels is not None:
            chex.assert_shape(labels, inputs.shape[:1])
        length = inputs.shape[1]
        tok = nn.Embed(self.vocab_size + 1, self.embed_dim, name='tok_embed',
                       embedding_init=nn.with_logical_partitioning(
                           nn.initializers.normal(0.02), ('vocab', 'embed')))
        pos = self.param('pos_embed', nn.with_logical_partitioning(
            nn.initializers.normal(0.02), ('length', 'embed')), (self.max_len, self.embed_dim))
        if self.decode and self.has_variable('cache', 'position'):
            position = self.variable('cache', 'position', lambda: jnp.array(0, jnp.int32))
            positions = jax.lax.dynamic_slice_in_dim(pos, position.value, length)
            position.value += length
        else:
            if self.decode:  # init: create the counter
                self.variable('cache', 'position', lambda: jnp.array(0, jnp.int32))
            positions = pos[:length]
        x = add_positions(tok(inputs).astype(jnp.float32), positions.astype(jnp.float32),
                          impl=self.kernels.positions)
        if self.num_classes:
            if labels is None:
                raise ValueError('this GPT is class-conditional: pass labels')
            cls = nn.Embed(self.num_classes, self.embed_dim, name='class_embed',
                           embedding_init=nn.with_logical_partitioning(
                               nn.initializers.normal(0.02), (None, 'embed')))
            x = x + cls(labels)[:, None, :]
        x = nn.Dropout(self.dropout)(x, deterministic=deterministic).astype(self.dtype)
        x = nn.with_logical_constraint(x, ('batch', 'length', 'embed'))
        x = Stack(self.num_layers, self.num_heads, self.mlp_dim, causal=True,
                  dropout=self.dropout, dtype=self.dtype, decode=self.decode,
                  remat=self.remat, unroll=self.scan_unroll, kernels=self.kernels,
                  name='stack')(x, deterministic)
        x = layer_norm(self.dtype, 'ln_final')(x)
        logits = nn.Dense(self.vocab_size, dtype=self.dtype, name='head',
                          dot_general=dense_dot_general(self.kernels.matmul),
                          kernel_init=dense_init(('embed', 'vocab')),
                          bias_init=nn.with_logical_partitioning(
                              nn.initializers.zeros, ('vocab',)))(x)
        chex.assert_shape(logits, (*inputs.shape, self.vocab_size))
        return nn.with_logical_constraint(logits.astype(jnp.float32), ('batch', 'length', 'vocab'))
