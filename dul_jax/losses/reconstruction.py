"""Pixel reconstruction losses: the masked autoencoder's mean squared error on masked patches.

Units: squared pixel intensity, with pixels scaled to [0, 1] (so 0.01 is an RMS error of 0.1 of
the full range); with per-patch normalised targets, squared units of each patch's own standard
deviation. These are not likelihoods and have no nats or bits/dim.
"""

import jax
import jax.numpy as jnp


def patch_variance(patches: jax.Array) -> jax.Array:
    """Unbiased (ddof=1) variance of each patch over its last axis, keeping that axis."""
    return patches.var(axis=-1, keepdims=True, ddof=1)


def normalize_patches(patches: jax.Array, eps: float = 1e-6) -> jax.Array:
    """(x - mean) / sqrt(var + eps) within each patch (over its last axis), as MAE's norm_pix_loss.

    var is the unbiased (1/(n-1)) variance, as in MAE's `forward_loss` (facebookresearch/mae,
    models_mae.py: `target.var(dim=-1, keepdim=True)`, torch's default unbiased estimate, then
    `(target - mean) / (var + 1.e-6)**.5`); eps keeps a flat patch (var = 0) at 0, not 0/0.
    """
    mean = patches.mean(axis=-1, keepdims=True)
    var = patch_variance(patches)
    return (patches - mean) / jnp.sqrt(var + eps)


def masked_mse(pred: jax.Array, target: jax.Array, mask: jax.Array) -> jax.Array:
    """Per-example mean squared error over the masked patches only, shape (B,).

    pred, target: (B, N, D) patches of D pixel values; mask: (B, N), 1 = masked (scored),
    0 = visible (ignored). For example b:
        loss_b = sum_n mask_bn * (1/D) sum_d (pred_bnd - target_bnd)^2  /  sum_n mask_bn
    An example with no masked patch would divide 0 by 0; the MAE always masks at least one.
    """
    per_patch = jnp.mean(jnp.square(pred.astype(jnp.float32) - target.astype(jnp.float32)),
                         axis=-1)
    mask = mask.astype(jnp.float32)
    return jnp.sum(per_patch * mask, axis=-1) / jnp.sum(mask, axis=-1)
