"""Diffusion Transformer (DiT, Peebles & Xie 2023): patches -> the shared transformer Stack with
adaLN-Zero conditioning on (noise level, class) -> a modulated linear head -> pixels.

Positions are the fixed 2-D sine-cosine table; the head and every block's modulation start at
zero, so an untrained DiT predicts 0 everywhere.
"""

from typing import Any

import chex
import flax.linen as nn
import jax.numpy as jnp

from dul_jax.models.embeddings import TimeClassEmbed
from dul_jax.models.layers import layer_norm
from dul_jax.models.patches import PatchEmbed, sincos_2d, unpatchify
from dul_jax.models.transformer import Stack
from dul_jax.ops import Kernels


def _zero_dense(features: int, names: tuple, dtype: Any, name: str) -> nn.Dense:
    return nn.Dense(features, dtype=dtype, name=name,
                    kernel_init=nn.with_logical_partitioning(nn.initializers.zeros, names),
                    bias_init=nn.with_logical_partitioning(nn.initializers.zeros, names[1:]))


class DiT(nn.Module):
    """(x_t (B, H, W, C), t (B,), labels (B,) or None) -> (B, H, W, C) float32 prediction.

    Attributes:
      patch: patch side P; H and W must be multiples of it.
      embed_dim: token width; divisible by 4 (2-D sine-cosine positions) and by num_heads.
      num_layers, num_heads, mlp_dim: the transformer Stack's depth, heads and MLP width.
      num_classes: 0 for unconditional; else labels in [0, num_classes], num_classes the null
        class.
      dropout: dropout rate inside the blocks (active when deterministic=False).
      dtype: computation dtype (the output is float32 regardless).
      remat: a key of transformer.REMAT_POLICIES.
      scan_unroll: blocks per scan step; 0 = all (see Stack).
      kernels: each op's implementation (dul_jax/ops).
    """
    patch: int = 2
    embed_dim: int = 128
    num_layers: int = 4
    num_heads: int = 4
    mlp_dim: int = 512
    num_classes: int = 0
    dropout: float = 0.0
    dtype: Any = jnp.float32
    remat: str = 'none'
    scan_unroll: int = 1
    kernels: Kernels = Kernels()  # each op's implementation (dul_jax/ops)

    @nn.compact
    def __call__(self, x, t, labels=None, deterministic=True):
        """The network output at noisy images x_t.

        Args:
          x: (B, H, W, C) noisy images x_t.
          t: (B,) diffusion steps (ints, or real-valued: they go through a sinusoid).
          labels: (B,) ints in [0, num_classes] (num_classes = null class); None if
            unconditional.
          deterministic: False turns dropout on (needs a `dropout` rng).

        Returns:
          (B, H, W, C) float32, in the task's parameterisation (eps, v or x_0).
        """
        chex.assert_rank(x, 4)
        chex.assert_shape(t, x.shape[:1])
        _, height, width, channels = x.shape
        p = self.patch
        tokens = PatchEmbed(p, self.embed_dim, self.dtype, name='patch_embed')(x.astype(self.dtype))
        pos = sincos_2d(self.embed_dim, height // p, width // p)
        tokens = tokens + jnp.asarray(pos, self.dtype)[None]
        cond = TimeClassEmbed(self.embed_dim, self.num_classes, dtype=self.dtype,
                              name='embed')(t, labels)
        tokens = Stack(self.num_layers, self.num_heads, self.mlp_dim, causal=False,
                       dropout=self.dropout, dtype=self.dtype, remat=self.remat,
                       unroll=self.scan_unroll, kernels=self.kernels,
                       name='stack')(tokens, deterministic, cond=cond)
        shift, scale = jnp.split(_zero_dense(2 * self.embed_dim, ('embed', 'mlp'), self.dtype,
                                             'final_adaln')(nn.silu(cond)), 2, axis=-1)
        h = layer_norm(self.dtype, 'ln_final', affine=False)(tokens)
        h = h * (1.0 + scale[:, None]) + shift[:, None]
        out = _zero_dense(p * p * channels, ('embed', None), self.dtype, 'head')(h)
        out = unpatchify(out.astype(jnp.float32), p, height, width)
        chex.assert_equal_shape([out, x])
        return nn.with_logical_constraint(out, ('batch', 'height', 'width', 'channels'))
