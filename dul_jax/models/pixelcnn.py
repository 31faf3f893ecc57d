"""PixelCNN and Gated PixelCNN: autoregressive image models built from masked convolutions.

Both map images (B, H, W, C) scaled to [-1, 1] to per-position distribution parameters
(B, H, W, C, P) such that position (i, j, c) sees only the positions before it in raster order
(row, then column, then channel). Multi-channel images are autoregressive over channels too
(R -> G -> B): every hidden channel k belongs to data channel k % C, and at the current pixel a
kernel connects input group g to output group g' only if g < g' (mask 'A', the first layer) or
g <= g' (mask 'B', every later layer). Groups are interleaved (k % C) rather than contiguous so
that splitting 2n gate channels into two halves keeps every channel in its group.

PixelCNN (van den Oord et al. 2016a) stacks k x k masked convolutions; its receptive field has
a blind spot above and to the right. Gated PixelCNN (van den Oord et al. 2016b) removes it with
two stacks: a vertical stack whose (k//2 + 1) x k kernels see the rows at and above the current
one, shifted down by one row before it feeds the horizontal stack, and a horizontal stack whose
1 x (k//2 + 1) kernels see the current row up to the current pixel.

Layers are a Python loop, not nn.scan: on XLA:CPU a convolution inside a while loop runs its
backward pass about 100x slower (a 5-layer gated step on 8x8 digits: 12 s scanned, 0.3 s
unrolled), and these stacks are shallow (<= 20 layers) so compile time stays small.
"""

from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dul_jax.models.layers import dense_init

ACTIVATION = ('batch', 'height', 'width', 'channels')


def raster_mask(kernel_size: tuple[int, int], centre: tuple[int, int], in_features: int,
                out_features: int, data_channels: int, include_centre: bool) -> np.ndarray:
    """(kh, kw, in, out) 0/1 mask: taps before `centre` in raster order, and at the centre the
    channel groups allowed by mask 'A' (include_centre=False) or 'B' (True)."""
    kh, kw = kernel_size
    rows, cols = np.meshgrid(np.arange(kh), np.arange(kw), indexing='ij')
    before = (rows < centre[0]) | ((rows == centre[0]) & (cols < centre[1]))
    mask = np.broadcast_to(before[:, :, None, None], (kh, kw, in_features, out_features)).copy()
    group_in = np.arange(in_features)[:, None] % data_channels
    group_out = np.arange(out_features)[None, :] % data_channels
    mask[centre] = group_in <= group_out if include_centre else group_in < group_out
    return mask.astype(np.float32)


def masked_kernel(kernel: jax.Array, centre: tuple[int, int], mask: str | None,
                  data_channels: int) -> jax.Array:
    """A (kh, kw, in, out) kernel with raster_mask applied (mask 'A' or 'B'; None: as it is)."""
    if mask is None:
        return kernel
    kh, kw, in_features, out_features = kernel.shape
    return kernel * raster_mask((kh, kw), centre, in_features, out_features, data_channels,
                                include_centre=mask == 'B')


class MaskedConv(nn.Module):
    """A 2-D convolution, optionally masked for raster-order causality ('A' or 'B').

    `centre` is the kernel tap that lies over the output pixel (default: the middle); the input
    is padded so the output keeps the input's height and width. mask=None uses every tap (the
    vertical stack, whose kernel shape alone keeps it causal up to the shift).

    Attributes:
      features: output channels.
      kernel_size: (kh, kw).
      mask: 'A' (centre excludes own channel group), 'B' (includes it) or None (no mask).
      centre: (row, column) of the output pixel's tap; None for (kh // 2, kw // 2).
      data_channels: C of the image, for the channel groups (hidden channel k is group k % C).
      in_axis, out_axis: logical axis names of the kernel's input and output channels.
      dtype: computation dtype.
    """
    features: int
    kernel_size: tuple[int, int] = (1, 1)
    mask: str | None = 'B'
    centre: tuple[int, int] | None = None
    data_channels: int = 1
    in_axis: str = 'conv_in'     # 'channels' where the input is the image itself
    out_axis: str = 'conv_out'   # 'vocab' for the output head (level counts like 17 never split)
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """(B, H, W, in) -> (B, H, W, features)."""
        kh, kw = self.kernel_size
        centre = self.centre or (kh // 2, kw // 2)
        in_features = x.shape[-1]
        kernel = self.param('kernel', dense_init(('height', 'width', self.in_axis, self.out_axis)),
                            (kh, kw, in_features, self.features))
        bias = self.param('bias', nn.with_logical_partitioning(
            nn.initializers.zeros, (self.out_axis,)), (self.features,))
        kernel = masked_kernel(kernel, centre, self.mask, self.data_channels)
        y = jax.lax.conv_general_dilated(
            x.astype(self.dtype), kernel.astype(self.dtype), window_strides=(1, 1),
            padding=((centre[0], kh - 1 - centre[0]), (centre[1], kw - 1 - centre[1])),
            dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
        return y + bias.astype(self.dtype)


def class_bias(module: nn.Module, name: str, num_classes: int, features: int,
               labels: jax.Array | None) -> jax.Array | float:
    """A learned per-class bias (B, 1, 1, features), or 0 for an unconditional model."""
    if not num_classes:
        return 0.0
    if labels is None:
        raise ValueError('this model is class-conditional: pass labels')
    table = module.param(name, nn.with_logical_partitioning(
        nn.initializers.zeros, (None, 'conv_out')), (num_classes, features))
    return table[labels][:, None, None, :]


def gate(x: jax.Array) -> jax.Array:
    """tanh(first half) * sigmoid(second half) along channels."""
    a, b = jnp.split(x, 2, axis=-1)
    return jnp.tanh(a) * jax.nn.sigmoid(b)


def shift_down(x: jax.Array) -> jax.Array:
    """Row i gets row i - 1 (row 0 gets zeros): the vertical stack then sees only rows above."""
    return jnp.pad(x, ((0, 0), (1, 0), (0, 0), (0, 0)))[:, :-1]


def _output_head(x: jax.Array, hidden: int, out_per_channel: int, data_channels: int,
                 dtype) -> jax.Array:
    """relu -> 1x1 -> relu -> 1x1 to (B, H, W, C, P): P parameters per image channel."""
    x = MaskedConv(hidden, data_channels=data_channels, dtype=dtype, name='head_hidden')(
        nn.relu(x))
    x = MaskedConv(out_per_channel * data_channels, data_channels=data_channels,
                   out_axis='vocab', dtype=dtype, name='head')(nn.relu(x))
    b, h, w, _ = x.shape
    # output channel k belongs to data channel k % C: (..., P, C) -> (..., C, P)
    x = x.reshape(b, h, w, out_per_channel, data_channels).swapaxes(-1, -2)
    return x.astype(jnp.float32)


class ResidualBlock(nn.Module):
    """x + 1x1(relu(k x k(relu(x)) + class bias)), both convolutions mask 'B'.

    Attributes: hidden (channels in and out), kernel_size (k), data_channels (C), num_classes
    (0: no class bias), dtype.
    """
    hidden: int
    kernel_size: int
    data_channels: int
    num_classes: int = 0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, labels):
        """x: (B, H, W, hidden); labels: (B,) ints or None -> (B, H, W, hidden)."""
        k = self.kernel_size
        h = MaskedConv(self.hidden, (k, k), data_channels=self.data_channels, dtype=self.dtype,
                       name='conv')(nn.relu(x))
        h = h + class_bias(self, 'class_bias', self.num_classes, self.hidden, labels)
        h = MaskedConv(self.hidden, data_channels=self.data_channels, dtype=self.dtype,
                       name='proj')(nn.relu(h))
        return nn.with_logical_constraint(x + h, ACTIVATION)


class PixelCNN(nn.Module):
    """A k0 x k0 mask-'A' convolution, `num_layers` residual blocks of k x k mask-'B'
    convolutions, and a 1x1 output head: (B, H, W, C) in [-1, 1] -> (B, H, W, C, P).

    Attributes:
      out_per_channel: P, parameters per image channel (the number of levels for a
        categorical output, 3K for a K-component logistic mixture).
      data_channels: C of the images.
      hidden: channels of every hidden layer.
      num_layers: residual blocks after the first convolution.
      kernel_size, first_kernel_size: k of the blocks and k0 of the first (mask 'A') layer.
      num_classes: 0 for unconditional; else a learned per-class bias in every block.
      dtype: computation dtype (the output is float32 regardless).
    """
    out_per_channel: int
    data_channels: int = 1
    hidden: int = 64
    num_layers: int = 6
    kernel_size: int = 3
    first_kernel_size: int = 7
    num_classes: int = 0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, images: jax.Array, labels: jax.Array | None = None) -> jax.Array:
        """images: (B, H, W, C) in [-1, 1]; labels: (B,) ints in [0, num_classes), required iff
        num_classes > 0. Returns (B, H, W, C, P) float32; [b, i, j, c] depends only on the
        positions before (i, j, c) in raster order."""
        chex.assert_shape(images, (None, None, None, self.data_channels))
        k0, c = self.first_kernel_size, self.data_channels
        x = MaskedConv(self.hidden, (k0, k0), mask='A', data_channels=c, in_axis='channels',
                       dtype=self.dtype, name='input_conv')(images)
        x = nn.with_logical_constraint(x, ACTIVATION)
        for i in range(self.num_layers):
            x = ResidualBlock(self.hidden, self.kernel_size, c, self.num_classes, self.dtype,
                              name=f'block_{i}')(x, labels)
        return _output_head(x, self.hidden, self.out_per_channel, c, self.dtype)


class GatedLayer(nn.Module):
    """One Gated PixelCNN layer on (vertical, horizontal, skip sum); the first layer (mask 'A',
    no residual) reads the image in both stacks.

    Attributes: hidden (n), kernel_size (k: vertical kernels (k//2 + 1) x k, horizontal
    1 x (k//2 + 1)), data_channels (C), num_classes (0: no class biases), first, dtype.
    """
    hidden: int
    kernel_size: int
    data_channels: int
    num_classes: int = 0
    first: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, carry, labels):
        """carry: (v, h, skip), v and h (B, H, W, C) images for the first layer, else
        (B, H, W, hidden), and skip (B, H, W, hidden); labels: (B,) ints or None.
        Returns the next (v, h, skip), each (B, H, W, hidden)."""
        v, h, skip = carry
        k, n, c = self.kernel_size, self.hidden, self.data_channels
        p = k // 2
        in_axis = 'channels' if self.first else 'conv_in'
        # vertical: rows i-p..i, columns j-p..j+p (includes the current row, so it is shifted
        # down before the horizontal stack reads it)
        v_pre = MaskedConv(2 * n, (p + 1, k), mask=None, centre=(p, p), in_axis=in_axis,
                           dtype=self.dtype, name='v_conv')(v)
        v_pre = v_pre + class_bias(self, 'v_class_bias', self.num_classes, 2 * n, labels)
        # horizontal: columns j-p..j of row i; the current pixel only through the channel mask
        h_pre = MaskedConv(2 * n, (1, p + 1), mask='A' if self.first else 'B', centre=(0, p),
                           data_channels=c, in_axis=in_axis, dtype=self.dtype, name='h_conv')(h)
        link = MaskedConv(2 * n, mask=None, dtype=self.dtype, name='v_to_h')(shift_down(v_pre))
        h_pre = h_pre + link + class_bias(self, 'h_class_bias', self.num_classes, 2 * n, labels)
        v = nn.with_logical_constraint(gate(v_pre), ACTIVATION)
        gated = gate(h_pre)
        skip = skip + MaskedConv(n, data_channels=c, dtype=self.dtype, name='skip')(gated)
        out = MaskedConv(n, data_channels=c, dtype=self.dtype, name='h_out')(gated)
        h = nn.with_logical_constraint(out if self.first else h + out, ACTIVATION)
        return v, h, nn.with_logical_constraint(skip, ACTIVATION)


class GatedPixelCNN(nn.Module):
    """`num_layers` gated layers (the first k0-wide, the rest k-wide), skip connections summed
    into a 1x1 output head: (B, H, W, C) in [-1, 1] -> (B, H, W, C, P).

    Attributes: as PixelCNN's, with `num_layers` gated layers (the first k0-wide included).
    """
    out_per_channel: int
    data_channels: int = 1
    hidden: int = 64
    num_layers: int = 10
    kernel_size: int = 3
    first_kernel_size: int = 7
    num_classes: int = 0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, images: jax.Array, labels: jax.Array | None = None) -> jax.Array:
        """images: (B, H, W, C) in [-1, 1]; labels: (B,) ints in [0, num_classes), required iff
        num_classes > 0. Returns (B, H, W, C, P) float32, causal in raster order as PixelCNN's."""
        chex.assert_shape(images, (None, None, None, self.data_channels))
        b, height, width, _ = images.shape
        skip = jnp.zeros((b, height, width, self.hidden), self.dtype)
        carry = (images, images, skip)
        for i in range(self.num_layers):
            carry = GatedLayer(self.hidden, self.kernel_size if i else self.first_kernel_size,
                               self.data_channels, self.num_classes, first=i == 0,
                               dtype=self.dtype, name=f'layer_{i}')(carry, labels)
        return _output_head(carry[2], self.hidden, self.out_per_channel, self.data_channels,
                            self.dtype)
