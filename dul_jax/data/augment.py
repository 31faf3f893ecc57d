"""On-device image augmentations for contrastive learning (SimCLR, Chen et al. 2020; BYOL, Grill et
al. 2020): two random views of each image, made inside the jitted step, not on the host.

Per image, in this order: random resized crop, horizontal flip, colour jitter (brightness, then
contrast), Gaussian blur, random erasing (Zhong et al. 2017). Images are float32 (B, H, W, C) in
[0, 1]; each example gets its own key, so a batch of copies gives different views. The config
is static: close over it (or functools.partial) when jitting.
"""

import math

import jax
import jax.numpy as jnp

from dul_jax.errors import UserError

RANGES = ('crop_scale', 'crop_ratio', 'blur_sigma', 'erase_scale', 'erase_ratio')
PROBS = ('jitter_prob', 'blur_prob', 'erase_prob')


def check(condition: bool, message: str) -> None:
    if not condition:   # data/ sits below config/, so it raises UserError itself
        raise UserError(message)


def validate(cfg, image_shape) -> None:
    """Refuse bad augmentation settings (UserError) before anything compiles."""
    height, width = image_shape[:2]
    check(height >= 4 and width >= 4, f'model.augment needs images of at least 4x4, got '
          f'{height}x{width}; turn augmentation off for this data set.')
    for key in RANGES:
        r = cfg[key]
        check(isinstance(r, (tuple, list)) and len(r) == 2 and 0 < r[0] <= r[1],
              f'model.augment.{key} must be a range (low, high) with 0 < low <= high, got {r!r}.')
    for key in ('crop_scale', 'erase_scale'):
        check(cfg[key][1] <= 1, f'model.augment.{key} is an area fraction: set its high end to '
              f'at most 1, got {cfg[key][1]}.')
    for key in PROBS:
        check(0 <= cfg[key] <= 1, f'model.augment.{key} is a probability: set it in [0, 1], got '
              f'{cfg[key]}.')
    for key in ('brightness', 'contrast'):
        check(0 <= cfg[key] < 1, f'model.augment.{key} must be in [0, 1) so factors stay '
              f'positive, got {cfg[key]}.')


def _between(u: jax.Array, bounds) -> jax.Array:
    """Map u ~ U[0, 1) to U[low, high)."""
    return bounds[0] + u * (bounds[1] - bounds[0])


def _box(u: jax.Array, height: int, width: int, scale, ratio) -> tuple[jax.Array, jax.Array]:
    """(h, w) of a box of area fraction ~ U(scale), aspect w/h log-uniform in ratio, clipped."""
    area = _between(u[0], scale) * height * width
    aspect = jnp.exp(_between(u[1], (math.log(ratio[0]), math.log(ratio[1]))))
    h = jnp.clip(jnp.sqrt(area / aspect), 1.0, height)
    w = jnp.clip(jnp.sqrt(area * aspect), 1.0, width)
    return h, w


def _crop(image: jax.Array, u: jax.Array, cfg) -> jax.Array:
    """A random crop (continuous position and size), resampled to the full image size."""
    height, width = image.shape[:2]
    h, w = _box(u, height, width, cfg.crop_scale, cfg.crop_ratio)
    corner = jnp.stack([u[2] * (height - h), u[3] * (width - w)])
    # scale_and_translate maps input coordinate v to v * scale + translation (pixel centres at
    # +0.5), so [y0, y0 + h] lands on [0, height].
    scale = jnp.stack([height / h, width / w])
    return jax.image.scale_and_translate(image, image.shape, (0, 1), scale, -scale * corner,
                                         'linear', antialias=True)


def _flip(image: jax.Array, u: jax.Array, cfg) -> jax.Array:
    """The mirror image (left-right)."""
    return image[:, ::-1]


def _jitter(image: jax.Array, u: jax.Array, cfg) -> jax.Array:
    """Brightness then contrast around the per-image mean, each clipped to [0, 1]."""
    b, c = cfg.brightness, cfg.contrast
    image = jnp.clip(image * _between(u[0], (1 - b, 1 + b)), 0, 1)
    mean = jnp.mean(image)
    return jnp.clip((image - mean) * _between(u[1], (1 - c, 1 + c)) + mean, 0, 1)


def _blur_matrix(size: int, sigma: jax.Array) -> jax.Array:
    """(size, size) rows of normalised Gaussian weights; renormalised rows keep constants fixed."""
    i = jnp.arange(size, dtype=jnp.float32)
    weights = jnp.exp(-(i[:, None] - i[None, :]) ** 2 / (2 * sigma ** 2))
    return weights / jnp.sum(weights, axis=1, keepdims=True)


def _blur(image: jax.Array, u: jax.Array, cfg) -> jax.Array:
    """Separable Gaussian blur with sigma ~ U(blur_sigma) pixels."""
    sigma = _between(u[0], cfg.blur_sigma)
    # The full matrix, not a truncated kernel: at these image sizes it is a small matmul.
    rows, cols = _blur_matrix(image.shape[0], sigma), _blur_matrix(image.shape[1], sigma)
    return jnp.einsum('ij,jwc,kw->ikc', rows, image, cols, precision='highest')


def _erase(image: jax.Array, u: jax.Array, cfg) -> jax.Array:
    """Zero one whole-pixel rectangle of area fraction ~ U(erase_scale)."""
    height, width = image.shape[:2]
    h, w = (jnp.round(s).astype(jnp.int32)
            for s in _box(u, height, width, cfg.erase_scale, cfg.erase_ratio))
    y0 = jnp.floor(u[2] * (height - h + 1)).astype(jnp.int32)
    x0 = jnp.floor(u[3] * (width - w + 1)).astype(jnp.int32)
    ys, xs = jnp.arange(height)[:, None, None], jnp.arange(width)[None, :, None]
    inside = (ys >= y0) & (ys < y0 + h) & (xs >= x0) & (xs < x0 + w)
    return jnp.where(inside, 0.0, image)


def _augment_one(image: jax.Array, key: jax.Array, cfg) -> jax.Array:
    """One view of one (H, W, C) image."""
    # One flat draw for everything (each random call, and a 2-D shape, adds seconds of compile
    # time on CPU): row 0 for the crop, then per stage a coin and its parameters, so a stage's
    # draws do not depend on which others are on.
    u = jax.random.uniform(key, (25,)).reshape(5, 5)
    image = _crop(image, u[0], cfg)
    stages = ((0.5 if cfg.flip else 0.0, _flip), (cfg.jitter_prob, _jitter),
              (cfg.blur_prob, _blur), (cfg.erase_prob, _erase))
    for row, (prob, stage) in zip(u[1:], stages):
        if prob > 0:   # a static choice: a stage that never applies stays out of the graph
            image = jnp.where(row[0] < prob, stage(image, row[1:], cfg), image)
    return jnp.clip(image, 0, 1)   # resampling and blur can overshoot by float rounding


def augment(images: jax.Array, rng: jax.Array, cfg) -> jax.Array:
    """One augmented view per image of a float (B, H, W, C) batch in [0, 1], one key per image."""
    keys = jax.random.split(rng, images.shape[0])
    return jax.vmap(lambda x, k: _augment_one(x, k, cfg))(images.astype(jnp.float32), keys)


def two_views(images: jax.Array, rng: jax.Array, cfg) -> tuple[jax.Array, jax.Array]:
    """Two independent views of each image, for a contrastive or BYOL loss."""
    # vmap over the two keys, not two calls: one copy of the graph to compile
    views = jax.vmap(lambda i: augment(images, jax.random.fold_in(rng, i), cfg))(jnp.arange(2))
    return views[0], views[1]
