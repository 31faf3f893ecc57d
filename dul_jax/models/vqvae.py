"""A VQ-VAE's encoder, codebook and decoder (van den Oord et al. 2017, section 4.1, small).

Encoder: `stages` strided 4x4 convolutions (each halves the image and doubles the width, up to
`hidden`), a 3x3 convolution, `res_blocks` residual blocks (ReLU, 3x3 conv to `res_channels`,
ReLU, 1x1 conv back) and a 1x1 convolution to the code dimension D: a (H / 2^stages,
W / 2^stages, D) grid of vectors. The codebook is a (K, D) param. Decoder: a 3x3 convolution from
D, the same residual blocks, then per stage nearest-neighbour upsampling and a 3x3 convolution
halving the width (no checkerboard artefacts, as in models/vae.py), and a 3x3 output convolution
to `out_per_value` numbers per pixel value (the task reads them as a likelihood). Quantisation
itself is math on these arrays (losses/vq.py).
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from dul_jax.models.layers import conv

ACTIVATION = ('batch', 'height', 'width', 'channels')
CODEBOOK_AXES = ('vocab', 'embed')


class ResidualStack(nn.Module):
    hidden: int
    res_channels: int
    num_blocks: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, h):
        for i in range(self.num_blocks):
            r = conv(self.res_channels, f'block_{i}_conv3', dtype=self.dtype)(nn.relu(h))
            r = conv(self.hidden, f'block_{i}_conv1', kernel=1, dtype=self.dtype)(nn.relu(r))
            h = nn.with_logical_constraint(h + r, ACTIVATION)
        return nn.relu(h)


class Encoder(nn.Module):
    stages: int
    hidden: int
    res_channels: int
    res_blocks: int
    code_dim: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        """(B, H, W, C) in [-1, 1] -> z_e (B, H / 2^stages, W / 2^stages, D) float32."""
        h = x.astype(self.dtype)
        for i in range(self.stages):   # widths hidden / 2^(stages - 1), ..., hidden / 2, hidden
            width = self.hidden // 2 ** (self.stages - 1 - i)
            h = nn.relu(conv(width, f'down_{i}', stride=2, kernel=4, dtype=self.dtype)(h))
            h = nn.with_logical_constraint(h, ACTIVATION)
        h = conv(self.hidden, 'conv_in', dtype=self.dtype)(h)
        h = ResidualStack(self.hidden, self.res_channels, self.res_blocks, self.dtype,
                          name='residual')(h)
        z = conv(self.code_dim, 'to_code', kernel=1, dtype=self.dtype)(h)
        return nn.with_logical_constraint(z.astype(jnp.float32), ACTIVATION)


class Decoder(nn.Module):
    image_shape: tuple[int, int, int]
    stages: int
    hidden: int
    res_channels: int
    res_blocks: int
    out_per_value: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, z):
        """z_q (B, h, w, D) -> (B, H, W, C, out_per_value) float32."""
        height, width, channels = self.image_shape
        h = conv(self.hidden, 'conv_in', dtype=self.dtype)(z.astype(self.dtype))
        h = ResidualStack(self.hidden, self.res_channels, self.res_blocks, self.dtype,
                          name='residual')(h)
        for i in range(self.stages):   # widths hidden / 2, ..., hidden / 2^stages
            h = jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)
            h = nn.relu(conv(self.hidden // 2 ** (i + 1), f'up_{i}', dtype=self.dtype)(h))
            h = nn.with_logical_constraint(h, ACTIVATION)
        out = conv(channels * self.out_per_value, 'out', dtype=self.dtype,
                   names=('height', 'width', 'conv_in', None))(h)
        return out.astype(jnp.float32).reshape((-1, height, width, channels,
                                                self.out_per_value))


class VQVAE(nn.Module):
    image_shape: tuple[int, int, int]
    stages: int
    hidden: int
    res_channels: int
    res_blocks: int
    code_dim: int
    num_codes: int
    out_per_value: int
    dtype: Any = jnp.float32

    def setup(self):
        self.encoder = Encoder(self.stages, self.hidden, self.res_channels, self.res_blocks,
                               self.code_dim, self.dtype)
        self.decoder = Decoder(self.image_shape, self.stages, self.hidden, self.res_channels,
                               self.res_blocks, self.out_per_value, self.dtype)
        # N(0, 1): the scale of the encoder's outputs at init (a fan-in scaled 1x1 conv), so
        # that many codes are someone's nearest from the start
        self.codebook = self.param(
            'codebook', nn.with_logical_partitioning(nn.initializers.normal(1.0), CODEBOOK_AXES),
            (self.num_codes, self.code_dim))

    def encode(self, x):
        return self.encoder(x)

    def decode(self, z_q):
        return self.decoder(z_q)

    def codes(self):
        """The (K, D) codebook."""
        return self.codebook

    def __call__(self, x):
        """Encoder and decoder (for init): the decoder's output at the unquantised z_e."""
        return self.decode(self.encode(x)), self.codes()
