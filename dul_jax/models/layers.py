"""Layers every model builds from, each tagged with logical axis names (sharding/mesh.py maps
them to mesh axes): initialisers, LayerNorm, GroupNorm, batch-statistics norm, convolution."""

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any


def dense_init(names: tuple[str | None, ...], scale: float = 1.0) -> Callable:
    """Normal init with variance scale/fan_in, tagged with logical axis names."""
    return nn.with_logical_partitioning(
        nn.initializers.variance_scaling(scale, 'fan_in', 'normal'), names)


def layer_norm(dtype: Dtype, name: str | None = None, affine: bool = True) -> nn.LayerNorm:
    """LayerNorm over `embed`; `affine=False` drops its scale and bias (adaLN supplies them from
    a condition)."""
    return nn.LayerNorm(
        dtype=dtype, name=name, use_scale=affine, use_bias=affine,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones, ('embed',)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ('embed',)))


def group_norm(groups: int, name: str, dtype: Dtype) -> nn.GroupNorm:
    """GroupNorm over `channels` of (B, H, W, C) feature maps."""
    return nn.GroupNorm(num_groups=groups, dtype=dtype, name=name,
                        scale_init=nn.with_logical_partitioning(nn.initializers.ones,
                                                                ('channels',)),
                        bias_init=nn.with_logical_partitioning(nn.initializers.zeros,
                                                               ('channels',)))


def conv(features: int, name: str, stride: int = 1, kernel: int = 3, dtype: Dtype = jnp.float32,
         names: tuple = ('height', 'width', 'conv_in', 'conv_out'), zero: bool = False) -> nn.Conv:
    """A square `kernel` x `kernel` convolution with SAME padding; `zero=True` initialises it to
    zero (a residual branch or output head that starts as the identity or zero)."""
    init = nn.initializers.zeros if zero else nn.initializers.variance_scaling(
        1.0, 'fan_in', 'normal')
    return nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding='SAME',
                   dtype=dtype, name=name, kernel_init=nn.with_logical_partitioning(init, names),
                   bias_init=nn.with_logical_partitioning(nn.initializers.zeros, names[-1:]))


class BatchStatsNorm(nn.Module):
    """Batch normalisation that always uses the batch's statistics, in training and sampling
    alike (as DCGAN samples), so it keeps no running averages: a GAN generator, the projection
    heads of contrastive learning. Needs batches of more than a few examples."""

    @nn.compact
    def __call__(self, x):
        axes = tuple(range(x.ndim - 1))
        x32 = x.astype(jnp.float32)   # statistics in float32 under a bfloat16 compute dtype
        mean = jnp.mean(x32, axes, keepdims=True)
        var = jnp.mean(jnp.square(x32 - mean), axes, keepdims=True)
        names = ('channels',) if x.ndim == 4 else ('mlp',)
        scale = self.param('scale', nn.with_logical_partitioning(nn.initializers.ones, names),
                           (x.shape[-1],))
        bias = self.param('bias', nn.with_logical_partitioning(nn.initializers.zeros, names),
                          (x.shape[-1],))
        return ((x32 - mean) * jax.lax.rsqrt(var + 1e-5) * scale + bias).astype(x.dtype)
