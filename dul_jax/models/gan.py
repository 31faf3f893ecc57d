"""GAN players: DCGAN-style convolutional generators and discriminators for small images
(Radford et al. 2016), MLPs for 2-D toy data, spectral normalisation (Miyato et al. 2018) and the
projection discriminator for class-conditional GANs (Miyato & Koyama 2018).

Discriminators return one logit (or critic value) per example. Spectral normalisation keeps its
power-iteration vector u in the 'spectral' collection (the trainer's model state), updated only
when called with `update=True` (the discriminator's own phase).
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from dul_jax.models.layers import BatchStatsNorm, Dtype

SPECTRAL = 'spectral'


def _l2_normalize(x, eps=1e-12):
    return x * jax.lax.rsqrt(jnp.sum(x * x) + eps)


def spectral_normalize(module: nn.Module, kernel: jax.Array, update: bool) -> jax.Array:
    """`kernel` / sigma, sigma its largest singular value as a (fan_in, out) matrix, estimated by
    one power iteration from the stored u per call (as the SNGAN reference code); the new u is
    kept when `update`. No gradient flows through u (it is a running estimate, not a weight)."""
    w = kernel.reshape(-1, kernel.shape[-1])
    u_var = module.variable(SPECTRAL, 'u', lambda: _l2_normalize(
        jax.random.normal(module.make_rng('params'), (w.shape[-1],))))
    v = jax.lax.stop_gradient(_l2_normalize(w @ u_var.value))
    u = jax.lax.stop_gradient(_l2_normalize(w.T @ v))
    sigma = v @ w @ u
    if update and not module.is_initializing():
        u_var.value = u
    return kernel / sigma


class Layer(nn.Module):
    """A dense layer (kernel_size ()) or SAME-padded convolution, optionally spectrally
    normalised; `names` are the kernel's logical axes."""
    features: int
    names: tuple
    kernel_size: tuple = ()
    stride: int = 1
    spectral: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, update: bool = False):
        shape = tuple(self.kernel_size) + (x.shape[-1], self.features)
        kernel = self.param('kernel', nn.with_logical_partitioning(
            nn.initializers.variance_scaling(1.0, 'fan_in', 'normal'), self.names), shape)
        bias = self.param('bias', nn.with_logical_partitioning(
            nn.initializers.zeros, self.names[-1:]), (self.features,))
        if self.spectral:
            kernel = spectral_normalize(self, kernel, update)
        x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
        if not self.kernel_size:
            return x @ kernel + bias.astype(self.dtype)
        y = jax.lax.conv_general_dilated(x, kernel, (self.stride,) * 2, 'SAME',
                                         dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
        return y + bias.astype(self.dtype)


class ProjectionHead(nn.Module):
    """The logit of features h (B, F): a linear layer, plus <embed(y), h> for a class-conditional
    discriminator (the projection discriminator)."""
    num_classes: int
    spectral: bool
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, h, labels, update: bool):
        out = Layer(1, ('embed', None), spectral=self.spectral, dtype=self.dtype,
                    name='out')(h, update)[:, 0]
        if self.num_classes:
            table = self.param('embedding', nn.with_logical_partitioning(
                nn.initializers.variance_scaling(1.0, 'fan_in', 'normal'), (None, 'embed')),
                (self.num_classes, h.shape[-1]))
            if self.spectral:
                table = SpectralTable(name='embedding_sn')(table, update)
            out = out + jnp.sum(table[labels].astype(h.dtype) * h, axis=-1)
        return out.astype(jnp.float32)


class SpectralTable(nn.Module):
    """Spectral normalisation of a parameter made elsewhere (the projection's class table)."""

    @nn.compact
    def __call__(self, table, update: bool):
        return spectral_normalize(self, table, update)


def _condition(z, labels, num_classes: int):
    """z with a one-hot of the class appended (a conditional generator's input)."""
    if not num_classes:
        return z
    return jnp.concatenate([z, jax.nn.one_hot(labels, num_classes, dtype=z.dtype)], axis=-1)


class ConvGenerator(nn.Module):
    """z (B, Z) -> images (B, H, W, C) in [-1, 1]: a dense layer to (H/4, W/4, 2 ch), then two
    stride-2 transposed 4x4 convolutions, batch-normalised ReLUs between and tanh at the end."""
    shape: tuple[int, int, int]
    channels: int = 64
    num_classes: int = 0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, z, labels=None):
        h, w, c = self.shape
        grid = (h // 4, w // 4, 2 * self.channels)
        x = Layer(math.prod(grid), (None, 'mlp'), dtype=self.dtype, name='project')(
            _condition(z, labels, self.num_classes))
        x = nn.relu(BatchStatsNorm(name='norm_0')(x)).reshape((-1,) + grid)
        for i, features in enumerate((self.channels, c)):
            x = nn.ConvTranspose(features, (4, 4), strides=(2, 2), padding='SAME',
                                 dtype=self.dtype, name=f'up_{i}', kernel_init=(
                                     nn.with_logical_partitioning(
                                         nn.initializers.variance_scaling(1.0, 'fan_in', 'normal'),
                                         ('height', 'width', 'conv_in',
                                          'conv_out' if i == 0 else None))),
                                 bias_init=nn.with_logical_partitioning(
                                     nn.initializers.zeros, ('conv_out' if i == 0 else None,)))(x)
            if i == 0:
                x = nn.relu(BatchStatsNorm(name='norm_1')(x))
        return jnp.tanh(x.astype(jnp.float32))


class ConvDiscriminator(nn.Module):
    """Images (B, H, W, C) in [-1, 1] -> logits (B,): 3x3 and stride-2 4x4 convolutions with
    leaky ReLUs (SNGAN's standard CNN, two resolutions), global sum pooling, a projection head."""
    channels: int = 64
    num_classes: int = 0
    spectral: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, labels=None, update: bool = False):
        names = ('height', 'width', 'conv_in', 'conv_out')
        for i, (features, kernel, stride) in enumerate((
                (self.channels, 3, 1), (self.channels, 4, 2),
                (2 * self.channels, 3, 1), (2 * self.channels, 4, 2),
                (4 * self.channels, 3, 1))):
            x = Layer(features, names, (kernel, kernel), stride, self.spectral, self.dtype,
                      name=f'conv_{i}')(x, update)
            x = nn.leaky_relu(x, 0.1)
        return ProjectionHead(self.num_classes, self.spectral, self.dtype, name='head')(
            jnp.sum(x, axis=(1, 2)), labels, update)


class MLPGenerator(nn.Module):
    """z (B, Z) -> points (B, D): `depth` ReLU layers of `width` units with batch statistics."""
    out_dim: int
    width: int = 256
    depth: int = 3
    num_classes: int = 0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, z, labels=None):
        x = _condition(z, labels, self.num_classes)
        for i in range(self.depth):
            x = Layer(self.width, (None, 'mlp') if i == 0 else ('embed', 'mlp'),
                      dtype=self.dtype, name=f'dense_{i}')(x)
            x = nn.relu(BatchStatsNorm(name=f'norm_{i}')(x))
        return Layer(self.out_dim, ('embed', None), dtype=self.dtype, name='out')(x).astype(
            jnp.float32)


class MLPDiscriminator(nn.Module):
    """Points (B, D) -> logits (B,): `depth` leaky-ReLU layers of `width` units."""
    width: int = 256
    depth: int = 3
    num_classes: int = 0
    spectral: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, labels=None, update: bool = False):
        for i in range(self.depth):
            x = Layer(self.width, (None, 'mlp') if i == 0 else ('embed', 'mlp'),
                      spectral=self.spectral, dtype=self.dtype, name=f'dense_{i}')(x, update)
            x = nn.leaky_relu(x, 0.2)
        return ProjectionHead(self.num_classes, self.spectral, self.dtype, name='head')(
            x, labels, update)
