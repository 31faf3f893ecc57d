"""Image encoders for representation learning, and the MLP heads that sit on them.

Encoders map (B, H, W, C) floats in [0, 1] to (B, D) features, one example at a time (GroupNorm
and LayerNorm, no batch statistics), so the features a probe reads do not depend on the batch.
The heads (SimCLR's projector, BYOL's projector and predictor) normalise by batch statistics as
the papers' heads do; they are used in training only.
"""

import flax.linen as nn
import jax.numpy as jnp

from dul_jax.models.layers import BatchStatsNorm, Dtype, conv, dense_init, group_norm, layer_norm
from dul_jax.models.patches import PatchEmbed, sincos_2d
from dul_jax.models.transformer import Stack
from dul_jax.ops import Kernels


def _norm(channels: int, name: str, dtype: Dtype) -> nn.GroupNorm:
    return group_norm(min(8, channels), name, dtype)


class ResidualBlock(nn.Module):
    """A pre-activation basic block (He et al. 2016): two 3x3 convs, a 1x1 shortcut where the
    width or resolution changes."""
    features: int
    stride: int = 1
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        h = nn.relu(_norm(x.shape[-1], 'norm_0', self.dtype)(x))
        shortcut = x
        if self.stride != 1 or x.shape[-1] != self.features:
            shortcut = conv(self.features, 'shortcut', self.stride, 1, self.dtype)(h)
        h = conv(self.features, 'conv_0', self.stride, dtype=self.dtype)(h)
        h = nn.relu(_norm(self.features, 'norm_1', self.dtype)(h))
        return shortcut + conv(self.features, 'conv_1', dtype=self.dtype)(h)


class ResNet(nn.Module):
    """A small ResNet: a 3x3 stem (of stride `stem_stride`), then one stage per entry of `blocks`
    (widths width, 2 width, 4 width, ...; every stage after the first halves the resolution),
    global average pooling. Features: (B, width * 2 ** (len(blocks) - 1))."""
    width: int = 32
    blocks: tuple[int, ...] = (1, 1, 1)
    stem_stride: int = 1
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, images):
        x = conv(self.width, 'stem', self.stem_stride, dtype=self.dtype,
                 names=('height', 'width', 'channels', 'conv_out'))(images.astype(self.dtype))
        for stage, count in enumerate(self.blocks):
            for i in range(count):
                x = ResidualBlock(self.width * 2 ** stage, 2 if stage and not i else 1,
                                  self.dtype, name=f'stage_{stage}_{i}')(x)
        x = nn.relu(_norm(x.shape[-1], 'norm', self.dtype)(x))
        return x.mean(axis=(1, 2)).astype(jnp.float32)


class ViTEncoder(nn.Module):
    """A ViT (Dosovitskiy et al. 2021) with fixed 2-D sine-cosine positions and a cls token, the
    blocks of the shared `Stack`; features: the final LayerNorm's cls token, (B, embed_dim)."""
    image_shape: tuple[int, int, int]
    patch: int
    embed_dim: int
    num_layers: int
    num_heads: int
    mlp_dim: int
    dtype: Dtype = jnp.float32
    remat: str = 'none'
    scan_unroll: int = 1
    kernels: Kernels = Kernels()

    @nn.compact
    def __call__(self, images):
        grid = (self.image_shape[0] // self.patch, self.image_shape[1] // self.patch)
        x = PatchEmbed(self.patch, self.embed_dim, self.dtype, name='patch_embed')(
            images.astype(self.dtype))
        x = x + jnp.asarray(sincos_2d(self.embed_dim, *grid), self.dtype)[None]
        cls = self.param('cls_token', nn.with_logical_partitioning(
            nn.initializers.normal(0.02), (None, None, 'embed')), (1, 1, self.embed_dim))
        x = jnp.concatenate([jnp.broadcast_to(cls.astype(x.dtype), (x.shape[0], 1, x.shape[2])),
                             x], axis=1)
        x = nn.with_logical_constraint(x, ('batch', 'length', 'embed'))
        x = Stack(self.num_layers, self.num_heads, self.mlp_dim, causal=False, dtype=self.dtype,
                  remat=self.remat, unroll=self.scan_unroll, kernels=self.kernels,
                  name='encoder')(x, deterministic=True)
        return layer_norm(self.dtype, 'norm')(x[:, 0]).astype(jnp.float32)


class MLPHead(nn.Module):
    """Dense -> batch-statistics norm -> ReLU -> Dense: SimCLR's projection head and BYOL's
    projector and predictor, (B, F) -> (B, out_dim) float32."""
    hidden: int
    out_dim: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        x = nn.Dense(self.hidden, dtype=self.dtype, name='hidden',
                     kernel_init=dense_init((None, 'mlp')))(x.astype(self.dtype))
        x = nn.relu(BatchStatsNorm(name='norm')(x))
        x = nn.Dense(self.out_dim, dtype=self.dtype, name='out',
                     kernel_init=dense_init(('mlp', None)))(x)
        return x.astype(jnp.float32)


def linear(num_classes: int, dtype: Dtype = jnp.float32, name: str = 'head') -> nn.Dense:
    """A linear classifier on (B, F) features (the supervised baseline's head)."""
    return nn.Dense(num_classes, dtype=dtype, name=name, kernel_init=dense_init((None, None)))

