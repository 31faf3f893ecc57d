"""Images as sequences of patches: patchify/unpatchify, patch embedding, 2-D sine-cosine positions.

Shared by the MAE encoder/decoder and the DiT. Images are (B, H, W, C) float; patches are
(B, N, P*P*C) in raster order of the patch grid (N = (H/P) * (W/P)), each patch flattened as
(row, column, channel).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dul_jax.models.layers import dense_init


def patchify(images: jax.Array, patch: int) -> jax.Array:
    """(B, H, W, C) -> (B, N, P*P*C) patches in raster order of the grid, each flattened as
    (row, column, channel); H and W must be multiples of `patch`."""
    b, h, w, c = images.shape
    if h % patch or w % patch:
        raise ValueError(f'image size {h}x{w} is not a multiple of the patch size {patch}')
    x = images.reshape(b, h // patch, patch, w // patch, patch, c)
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, (h // patch) * (w // patch), patch * patch * c)


def unpatchify(patches: jax.Array, patch: int, height: int, width: int) -> jax.Array:
    """(B, N, P*P*C) -> (B, height, width, C), the inverse of `patchify`."""
    b, n, d = patches.shape
    c = d // (patch * patch)
    gh, gw = height // patch, width // patch
    if n != gh * gw:
        raise ValueError(f'{n} patches do not tile a {height}x{width} image with patch {patch}')
    x = patches.reshape(b, gh, gw, patch, patch, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, height, width, c)


def sincos_1d(dim: int, positions: np.ndarray) -> np.ndarray:
    """(len(positions), dim): sin on the first half, cos on the second, frequencies
    1/10000^(2i/dim)."""
    if dim % 2:
        raise ValueError(f'sine-cosine embedding needs an even width, got {dim}')
    freqs = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2))
    angles = np.asarray(positions, np.float64).reshape(-1)[:, None] * freqs[None]
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)


def sincos_2d(dim: int, grid_h: int, grid_w: int) -> np.ndarray:
    """(grid_h * grid_w, dim) fixed position embedding: half the width encodes the row, half the
    column (as in MAE and DiT). Not learned, so not a parameter."""
    if dim % 4:
        raise ValueError(f'2-D sine-cosine embedding needs a width divisible by 4, got {dim}')
    rows, cols = np.meshgrid(np.arange(grid_h), np.arange(grid_w), indexing='ij')
    emb = np.concatenate([sincos_1d(dim // 2, rows), sincos_1d(dim // 2, cols)], axis=1)
    return emb.astype(np.float32)


class PatchEmbed(nn.Module):
    """Linear projection of flattened P x P patches to `embed_dim` (a strided conv, written as a
    matmul on patchified pixels so the kernel has plain logical axes).

    Attributes:
      patch: patch side P.
      embed_dim: output width.
      dtype: computation dtype.
    """
    patch: int
    embed_dim: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        """(B, H, W, C) -> (B, N, embed_dim) tokens, in `patchify`'s order (no positions)."""
        x = patchify(images, self.patch)
        x = nn.Dense(self.embed_dim, dtype=self.dtype, name='proj',
                     kernel_init=dense_init((None, 'embed')),
                     bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ('embed',)))(x)
        return nn.with_logical_constraint(x, ('batch', 'length', 'embed'))
