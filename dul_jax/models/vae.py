"""A variational autoencoder's encoder and decoder: strided convolutions (each stage halves the
image) then dense layers to a diagonal Gaussian posterior, and the mirror image back to
`out_per_value` numbers per pixel value (a Bernoulli logit, categorical logits or mixture
parameters; the task reads them). With no conv stages it is the fully connected VAE of Kingma &
Welling (2014) and Burda et al. (2016). Nearest-neighbour upsampling and a convolution replace
transposed convolutions (no checkerboard artefacts)."""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from dul_jax.models.layers import conv, dense_init

ACTIVATION = ('batch', 'height', 'width', 'channels')


def _dense(features: int, names: tuple, dtype, name: str, zero: bool = False) -> nn.Dense:
    kernel = nn.with_logical_partitioning(nn.initializers.zeros, names) if zero \
        else dense_init(names)
    return nn.Dense(features, dtype=dtype, name=name, kernel_init=kernel,
                    bias_init=nn.with_logical_partitioning(nn.initializers.zeros, names[-1:]))


class Encoder(nn.Module):
    channels: tuple[int, ...]
    hidden: tuple[int, ...]
    latent_dim: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        """(B, H, W, C) in [-1, 1] -> posterior mean and log-variance, each (B, latent_dim)."""
        h = x.astype(self.dtype)
        for i, width in enumerate(self.channels):
            h = nn.relu(conv(width, f'conv_{i}', stride=2, dtype=self.dtype)(h))
            h = nn.with_logical_constraint(h, ACTIVATION)
        h = h.reshape(h.shape[0], -1)
        for i, width in enumerate(self.hidden):
            h = nn.relu(_dense(width, ('embed', 'mlp'), self.dtype, f'dense_{i}')(h))
        stats = _dense(2 * self.latent_dim, ('mlp', None), self.dtype, 'posterior')(h)
        mean, log_var = jnp.split(stats.astype(jnp.float32), 2, axis=-1)
        return mean, log_var


class Decoder(nn.Module):
    image_shape: tuple[int, int, int]
    channels: tuple[int, ...]      # the encoder's; used in reverse
    hidden: tuple[int, ...]
    out_per_value: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, z):
        """(B, latent_dim) -> (B, H, W, C, out_per_value) float32."""
        height, width, channels = self.image_shape
        h = z.astype(self.dtype)
        for i, units in enumerate(reversed(self.hidden)):
            h = nn.relu(_dense(units, ('embed', 'mlp'), self.dtype, f'dense_{i}')(h))
        if self.channels:
            scale = 2 ** len(self.channels)
            grid = (height // scale, width // scale, self.channels[-1])
            h = nn.relu(_dense(grid[0] * grid[1] * grid[2], ('mlp', 'embed'), self.dtype,
                               'to_grid')(h)).reshape((-1,) + grid)
            for i, width_out in enumerate(reversed(self.channels)):
                h = jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)
                h = nn.relu(conv(width_out, f'conv_{i}', dtype=self.dtype)(h))
                h = nn.with_logical_constraint(h, ACTIVATION)
            out = conv(channels * self.out_per_value, 'out', dtype=self.dtype,
                       names=('height', 'width', 'conv_in', None))(h)
        else:
            out = _dense(height * width * channels * self.out_per_value, ('mlp', None),
                         self.dtype, 'out')(h)
        return out.astype(jnp.float32).reshape(
            (-1, height, width, channels, self.out_per_value))


class VAE(nn.Module):
    image_shape: tuple[int, int, int]
    channels: tuple[int, ...]
    hidden: tuple[int, ...]
    latent_dim: int
    out_per_value: int
    dtype: Any = jnp.float32

    def setup(self):
        self.encoder = Encoder(self.channels, self.hidden, self.latent_dim, self.dtype)
        self.decoder = Decoder(self.image_shape, self.channels, self.hidden, self.out_per_value,
                               self.dtype)

    def encode(self, x):
        return self.encoder(x)

    def decode(self, z):
        return self.decoder(z)

    def __call__(self, x, z):
        """Both halves at once (for init): the posterior of x and the decoder's output at z."""
        return self.encode(x), self.decode(z)
