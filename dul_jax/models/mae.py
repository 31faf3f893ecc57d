"""Masked autoencoder (He et al., 2021): a ViT encoder on a random subset of the patches, and a
narrower, shallower decoder that predicts the pixels of every patch.

Both halves are the shared bidirectional `Stack` (causal=False) with fixed 2-D sine-cosine
positions; the patch embedding and patchify live in patches.py. Masking is per example: each
example draws uniform noise per patch, sorts it, keeps the patches with the smallest noise and
keeps exactly `num_kept(num_patches, mask_ratio)` of them, as MAE's `random_masking` does.
"""

from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from dul_jax.models.layers import dense_init, layer_norm
from dul_jax.models.patches import PatchEmbed, sincos_2d
from dul_jax.models.transformer import Stack
from dul_jax.ops import Kernels


def num_kept(num_patches: int, mask_ratio: float) -> int:
    """Patches left visible per example: int(num_patches * (1 - mask_ratio)), truncated.

    This is `len_keep` of MAE's `random_masking` (facebookresearch/mae, models_mae.py), the same
    float expression truncated the same way: 16 patches at ratio 0.9 keep int(1.6) = 1, not 2.
    """
    return int(num_patches * (1 - mask_ratio))


def num_masked(num_patches: int, mask_ratio: float) -> int:
    """Patches masked per example (the same for every example): all but `num_kept`."""
    return num_patches - num_kept(num_patches, mask_ratio)


def random_masking(tokens: jax.Array, noise: jax.Array, num_keep: int
                   ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Keep the `num_keep` tokens of each example with the smallest noise.

    tokens: (B, N, D); noise: (B, N) distinct values (uniform draws). Returns
      visible: (B, num_keep, D) the kept tokens, in order of increasing noise;
      mask: (B, N) float32, 1 where a patch is masked, in the original patch order;
      ids_restore: (B, N) int, the inverse permutation: gathering [visible, masked tokens] with it
        along axis 1 puts every token back at its original position.
    """
    ids_shuffle = jnp.argsort(noise, axis=1)
    ids_restore = jnp.argsort(ids_shuffle, axis=1)  # rank of each patch in the shuffled order
    visible = jnp.take_along_axis(tokens, ids_shuffle[:, :num_keep, None], axis=1)
    mask = (ids_restore >= num_keep).astype(jnp.float32)
    return visible, mask, ids_restore


def unshuffle(tokens: jax.Array, ids_restore: jax.Array) -> jax.Array:
    """(B, N, D) tokens in shuffled order -> the original patch order."""
    return jnp.take_along_axis(tokens, ids_restore[..., None], axis=1)


def _token(name: str, module: nn.Module, dim: int) -> jax.Array:
    return module.param(name, nn.with_logical_partitioning(
        nn.initializers.normal(0.02), (None, None, 'embed')), (1, 1, dim))


class MAE(nn.Module):
    """images (B, H, W, C) floats in [0, 1] -> (pred (B, N, P*P*C) float32, mask (B, N)).

    `pred` is the decoder's output for every patch (in the patchify layout); `mask` is 1 on the
    masked patches, the only ones the loss looks at. The masking noise comes from the `masking`
    rng stream: `apply(..., rngs={'masking': key})`.

    Attributes:
      image_shape: (H, W, C); H and W multiples of `patch`.
      patch: patch side P; N = (H / P) * (W / P) patches.
      embed_dim, num_layers, num_heads, mlp_dim: the encoder (embed_dim divisible by 4).
      decoder_embed_dim, decoder_layers, decoder_heads, decoder_mlp_dim: the decoder.
      mask_ratio: fraction of patches masked (see `num_kept` for the rounding).
      dtype: computation dtype (predictions are float32 regardless).
      remat: a key of transformer.REMAT_POLICIES, for both stacks.
      scan_unroll: layers per scan step in both stacks.
      kernels: each op's implementation (dul_jax/ops).
    """
    image_shape: tuple[int, int, int]  # (H, W, C)
    patch: int
    embed_dim: int
    num_layers: int
    num_heads: int
    mlp_dim: int
    decoder_embed_dim: int
    decoder_layers: int
    decoder_heads: int
    decoder_mlp_dim: int
    mask_ratio: float = 0.75
    dtype: Any = jnp.float32
    remat: str = 'none'
    scan_unroll: int = 1  # layers per scan step in both stacks (>= depth: fully unrolled)
    kernels: Kernels = Kernels()  # each op's implementation (dul_jax/ops)

    @property
    def grid(self) -> tuple[int, int]:
        """(H / P, W / P): patch rows and columns."""
        return self.image_shape[0] // self.patch, self.image_shape[1] // self.patch

    @property
    def num_patches(self) -> int:
        """N, the number of patches per image."""
        return self.grid[0] * self.grid[1]

    def setup(self):
        """The submodules, shared by `encode`, `decode` and `__call__`."""
        self.patch_embed = PatchEmbed(self.patch, self.embed_dim, self.dtype)
        self.cls_token = _token('cls_token', self, self.embed_dim)
        self.encoder = Stack(self.num_layers, self.num_heads, self.mlp_dim, causal=False,
                             dtype=self.dtype, remat=self.remat, unroll=self.scan_unroll,
                             kernels=self.kernels)
        self.encoder_norm = layer_norm(self.dtype)
        self.decoder_embed = nn.Dense(
            self.decoder_embed_dim, dtype=self.dtype, kernel_init=dense_init((None, 'embed')),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ('embed',)))
        self.mask_token = _token('mask_token', self, self.decoder_embed_dim)
        self.decoder = Stack(self.decoder_layers, self.decoder_heads, self.decoder_mlp_dim,
                             causal=False, dtype=self.dtype, remat=self.remat,
                             unroll=self.scan_unroll, kernels=self.kernels)
        self.decoder_norm = layer_norm(self.dtype)
        pixels = self.patch * self.patch * self.image_shape[2]
        self.head = nn.Dense(
            pixels, dtype=self.dtype, kernel_init=dense_init(('embed', None)),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (None,)))

    def _with_cls(self, x: jax.Array) -> jax.Array:
        # The cls token has no position (MAE gives it a zero row), so it is prepended after.
        cls = jnp.broadcast_to(self.cls_token.astype(x.dtype), (x.shape[0], 1, x.shape[2]))
        return nn.with_logical_constraint(jnp.concatenate([cls, x], axis=1),
                                          ('batch', 'length', 'embed'))

    def encode(self, images: jax.Array, mask_ratio: float | None = None
               ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """(latent (B, 1 + kept, D) with the cls token first, mask (B, N), ids_restore (B, N)).

        images: (B, H, W, C) floats in [0, 1]; mask_ratio: None for the module's. mask_ratio 0
        encodes every patch in order (features for the probe evaluator): no rng is needed then.
        D is embed_dim; the latent is after the encoder's final LayerNorm.
        """
        ratio = self.mask_ratio if mask_ratio is None else mask_ratio
        x = self.patch_embed(images.astype(self.dtype))
        x = x + jnp.asarray(sincos_2d(self.embed_dim, *self.grid), self.dtype)[None]
        b, n, _ = x.shape
        masked = num_masked(n, ratio)
        if masked:
            noise = jax.random.uniform(self.make_rng('masking'), (b, n))
            x, mask, ids_restore = random_masking(x, noise, n - masked)
        else:
            mask = jnp.zeros((b, n), jnp.float32)
            ids_restore = jnp.broadcast_to(jnp.arange(n), (b, n))
        x = self.encoder(self._with_cls(x), deterministic=True)
        return self.encoder_norm(x), mask, ids_restore

    def decode(self, latent: jax.Array, ids_restore: jax.Array) -> jax.Array:
        """Encoded visible tokens (+ cls) -> predicted pixels of all N patches, float32.

        latent: (B, 1 + kept, D) from `encode`; ids_restore: (B, N) from `encode`.
        Returns (B, N, P*P*C) in the patchify layout and original patch order.
        """
        x = self.decoder_embed(latent)
        b, n = ids_restore.shape
        cls, visible = x[:, :1], x[:, 1:]
        fill = jnp.broadcast_to(self.mask_token.astype(x.dtype),
                                (b, n - visible.shape[1], x.shape[2]))
        x = unshuffle(jnp.concatenate([visible, fill], axis=1), ids_restore)
        x = x + jnp.asarray(sincos_2d(self.decoder_embed_dim, *self.grid), self.dtype)[None]
        x = nn.with_logical_constraint(jnp.concatenate([cls, x], axis=1),
                                       ('batch', 'length', 'embed'))
        x = self.decoder_norm(self.decoder(x, deterministic=True))
        pred = self.head(x[:, 1:]).astype(jnp.float32)
        return nn.with_logical_constraint(pred, ('batch', 'length', None))

    def __call__(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
        """images: (B, H, W, C) floats in [0, 1], masked at `mask_ratio`.

        Returns:
          pred (B, N, P*P*C) float32 for every patch, and mask (B, N) float32, 1 = masked.
        """
        chex.assert_shape(images, (None, *self.image_shape))
        latent, mask, ids_restore = self.encode(images)
        return self.decode(latent, ids_restore), mask
