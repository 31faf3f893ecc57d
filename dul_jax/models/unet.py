"""The DDPM U-Net (Ho et al. 2020): residual blocks with GroupNorm, conditioned on the noise level
and class, self-attention at low resolutions, and skip connections from the down to the up path.

Images are (B, H, W, C) with H and W divisible by 2^(len(channel_mults) - 1). Attention is the
shared transformer Attention over the H*W positions of a feature map.
"""

from typing import Any

import chex
import flax.linen as nn
import jax.numpy as jnp

from dul_jax.models.embeddings import TimeClassEmbed
from dul_jax.models.layers import conv, dense_init, group_norm
from dul_jax.models.transformer import Attention
from dul_jax.ops import Kernels

ACTIVATION = ('batch', 'height', 'width', 'channels')


class ResBlock(nn.Module):
    """x + conv(drop(act(gn(conv(act(gn(x))) + dense(emb))))), a 1x1 conv on the skip when the
    width changes; the last conv starts at zero, so a new block starts as the identity.

    Attributes: features (output channels), groups (GroupNorm groups; divides the input and
    output widths), dropout, dtype.
    """
    features: int
    groups: int
    dropout: float = 0.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, emb, deterministic=True):
        """x: (B, H, W, C_in); emb: (B, E) conditioning vector -> (B, H, W, features).
        deterministic=False turns dropout on (needs a `dropout` rng)."""
        h = conv(self.features, 'conv_0', dtype=self.dtype)(
            nn.silu(group_norm(self.groups, 'norm_0', self.dtype)(x)))
        h = h + nn.Dense(self.features, dtype=self.dtype, name='emb_proj',
                         kernel_init=dense_init(('embed', 'conv_out')),
                         bias_init=nn.with_logical_partitioning(nn.initializers.zeros,
                                                                ('conv_out',)))(
            nn.silu(emb))[:, None, None, :]
        h = nn.silu(group_norm(self.groups, 'norm_1', self.dtype)(h))
        h = nn.Dropout(self.dropout)(h, deterministic=deterministic)
        h = conv(self.features, 'conv_1', dtype=self.dtype, zero=True)(h)
        if x.shape[-1] != self.features:
            x = conv(self.features, 'skip', kernel=1, dtype=self.dtype)(x)
        return nn.with_logical_constraint(x + h, ACTIVATION)


class AttnBlock(nn.Module):
    """x + attention(gn(x)) over the H*W positions (non-causal, shared Attention module).

    Attributes: num_heads and groups (both divide the channels), dtype, kernels.
    """
    num_heads: int
    groups: int
    dtype: Any = jnp.float32
    kernels: Kernels = Kernels()

    @nn.compact
    def __call__(self, x):
        """(B, H, W, C) -> (B, H, W, C)."""
        b, h, w, c = x.shape
        tokens = group_norm(self.groups, 'norm', self.dtype)(x).reshape(b, h * w, c)
        tokens = nn.with_logical_constraint(tokens, ('batch', 'length', 'embed'))
        out = Attention(self.num_heads, causal=False, dtype=self.dtype, kernels=self.kernels,
                        name='attn')(tokens)
        return nn.with_logical_constraint(x + out.reshape(b, h, w, c), ACTIVATION)


class UNet(nn.Module):
    """(x_t (B, H, W, C), t (B,), labels (B,) or None) -> (B, H, W, C) float32 prediction.

    `channel_mults[i]` * `channels` is the width at resolution H / 2^i; `attn_resolutions` are the
    feature-map heights that get self-attention. With num_classes > 0 the label `num_classes`
    is the null class (classifier-free guidance).

    Attributes:
      channels: base width; the conditioning vector is 4 * channels wide.
      channel_mults: width multipliers per resolution, top first.
      num_res_blocks: residual blocks per resolution on the way down (one more on the way up).
      attn_resolutions: feature-map heights with self-attention after each residual block (the
        middle always has it).
      num_heads, groups: attention heads and GroupNorm groups (divide every width).
      num_classes: 0 for unconditional; else labels in [0, num_classes].
      dropout: rate inside the residual blocks (when deterministic=False).
      dtype: computation dtype (the output is float32 regardless).
      kernels: each op's implementation (dul_jax/ops).
    """
    channels: int = 64
    channel_mults: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (8,)
    num_heads: int = 4
    groups: int = 8
    num_classes: int = 0
    dropout: float = 0.0
    dtype: Any = jnp.float32
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
        out_channels = x.shape[-1]
        emb = TimeClassEmbed(4 * self.channels, self.num_classes, freq_dim=self.channels,
                             dtype=self.dtype, name='embed')(t, labels)
        res = lambda f, name: ResBlock(f, self.groups, self.dropout, self.dtype, name=name)
        attn = lambda name: AttnBlock(self.num_heads, self.groups, self.dtype, self.kernels,
                                      name=name)

        h = conv(self.channels, 'conv_in', dtype=self.dtype,
                 names=('height', 'width', 'channels', 'conv_out'))(x.astype(self.dtype))
        skips = [h]
        for level, mult in enumerate(self.channel_mults):
            for i in range(self.num_res_blocks):
                h = res(mult * self.channels, f'down_{level}_res_{i}')(h, emb, deterministic)
                if h.shape[1] in self.attn_resolutions:
                    h = attn(f'down_{level}_attn_{i}')(h)
                skips.append(h)
            if level < len(self.channel_mults) - 1:
                h = conv(h.shape[-1], f'down_{level}_sample', stride=2, dtype=self.dtype)(h)
                skips.append(h)

        h = res(h.shape[-1], 'mid_res_0')(h, emb, deterministic)
        h = attn('mid_attn')(h)
        h = res(h.shape[-1], 'mid_res_1')(h, emb, deterministic)

        for level, mult in reversed(list(enumerate(self.channel_mults))):
            for i in range(self.num_res_blocks + 1):
                h = jnp.concatenate([h, skips.pop()], axis=-1)
                h = res(mult * self.channels, f'up_{level}_res_{i}')(h, emb, deterministic)
                if h.shape[1] in self.attn_resolutions:
                    h = attn(f'up_{level}_attn_{i}')(h)
            if level > 0:
                h = jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)  # nearest-neighbour x2
                h = conv(h.shape[-1], f'up_{level}_sample', dtype=self.dtype)(h)
        assert not skips

        h = nn.silu(group_norm(self.groups, 'norm_out', self.dtype)(h))
        out = conv(out_channels, 'conv_out', dtype=self.dtype, zero=True,
                   names=('height', 'width', 'conv_in', 'channels'))(h)
        chex.assert_equal_shape([out, x])
        return nn.with_logical_constraint(out.astype(jnp.float32), ACTIVATION)

