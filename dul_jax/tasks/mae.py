"""Masked autoencoder task: reconstruct the masked patches of images from the visible ones.

Images become floats in [0, 1] (level / (num_levels - 1)). The training loss is the mean squared
error on the masked patches (optionally against per-patch normalised pixels); eval reports it per
example with fixed masks. `features` are the frozen encoder's, without masking, for the shared
probe evaluator (`eval.evaluators = ('probe',)`: a linear probe and k-NN).
It does not generate; its pictures are original / masked input (masked patches gray) /
reconstruction.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np

from dul_jax.config import check
from dul_jax.losses.reconstruction import masked_mse, normalize_patches, patch_variance
from dul_jax.model_configs import mae as default_model_config  # noqa: F401 (the contract)
from dul_jax.models.mae import MAE, num_masked
from dul_jax.models.patches import patchify, unpatchify
from dul_jax.tasks.base import LossOut, Task, jit_method
from dul_jax.tasks.capabilities import Features, Pictures

PROBE_POOLS = ('cls', 'mean')
MASKED_GRAY = 0.5  # masked patches in the pictures: between the black background and white ink


class MAETask(Task, Features, Pictures):
    width_keys = ('embed_dim', 'mlp_dim', 'num_heads', 'decoder_embed_dim',
                  'decoder_mlp_dim', 'decoder_heads')

    def build_model(self):
        m = self.cfg.model
        return MAE(
            image_shape=tuple(self.spec.shape), patch=m.patch_size, embed_dim=m.embed_dim,
            num_layers=m.num_layers, num_heads=m.num_heads, mlp_dim=m.mlp_dim,
            decoder_embed_dim=m.decoder_embed_dim, decoder_layers=m.decoder_layers,
            decoder_heads=m.decoder_heads, decoder_mlp_dim=m.decoder_mlp_dim,
            mask_ratio=m.mask_ratio, dtype=self.dtype, remat=m.remat, scan_unroll=m.scan_unroll,
            kernels=self.kernels)

    def validate(self):
        super().validate()
        self.require_images()
        m, spec = self.cfg.model, self.spec
        h, w, _ = spec.shape
        check(m.patch_size > 0 and h % m.patch_size == 0 and w % m.patch_size == 0,
              f'model.patch_size={m.patch_size} does not tile the {h}x{w} images of '
              f'"{spec.name}"; set --config.model.patch_size to a divisor of {math.gcd(h, w)}.')
        for width, heads in (('embed_dim', 'num_heads'), ('decoder_embed_dim', 'decoder_heads')):
            check(m[width] % m[heads] == 0 and m[width] % 4 == 0,
                  f'model.{width}={m[width]} must be a multiple of 4 (2-D sine-cosine positions) '
                  f'and of model.{heads}={m[heads]}; change --config.model.{width}.')
        patches = (h // m.patch_size) * (w // m.patch_size)
        masked = num_masked(patches, m.mask_ratio)
        check(0 < masked < patches,
              f'model.mask_ratio={m.mask_ratio} masks {masked} of {patches} patches; set '
              '--config.model.mask_ratio so that at least one patch is masked and one visible.')
        check(not m.norm_pix_loss or m.patch_size ** 2 * spec.shape[2] > 1,
              'model.norm_pix_loss needs patches of at least 2 values (an unbiased variance); '
              'set --config.model.patch_size above 1 or --config.model.norm_pix_loss=False.')
        check(m.probe_pool in PROBE_POOLS,
              f'model.probe_pool must be "cls" or "mean", got "{m.probe_pool}".')

    def example_size(self):
        return self.model.num_patches  # tokens per example: throughput is in patches/s

    def _pixels(self, batch):
        return batch['image'].astype(jnp.float32) / max(self.spec.num_levels - 1, 1)

    def _target(self, pixels):
        target = patchify(pixels, self.model.patch)
        return normalize_patches(target) if self.cfg.model.norm_pix_loss else target

    def _per_example_loss(self, params, batch, rng):
        pixels = self._pixels(batch)
        pred, mask = self.model.apply({'params': params}, pixels, rngs={'masking': rng})
        return masked_mse(pred, self._target(pixels), mask)

    def init(self, rng, batch):
        param_rng, mask_rng = jax.random.split(rng)
        return self.model.init({'params': param_rng, 'masking': mask_rng},
                               self._pixels(batch))['params']

    def loss(self, params, batch, rng, ctx):
        # Every example masks the same number of patches, so this is also the mean over all
        # masked patches of the batch.
        loss = self._per_example_loss(params, batch, rng).mean()
        return LossOut(loss, {'loss': loss})

    def eval_metrics(self, params, batch, rng):
        return {'loss': self._per_example_loss(params, batch, rng)}

    def features(self, params, levels):
        """The frozen encoder's (B, embed_dim) features, without masking."""
        latent, _, _ = self.model.apply({'params': params}, self._pixels({'image': levels}), 0.0,
                                        method=MAE.encode)
        pooled = latent[:, 0] if self.cfg.model.probe_pool == 'cls' else latent[:, 1:].mean(1)
        return pooled.astype(jnp.float32)

    # ---- pictures --------------------------------------------------------------------------

    @jit_method()
    def _reconstruct(self, params, image_levels, rng):
        pixels = self._pixels({'image': image_levels})
        pred, mask = self.model.apply({'params': params}, pixels, rngs={'masking': rng})
        target = patchify(pixels, self.model.patch)
        if self.cfg.model.norm_pix_loss:
            # Predictions are in per-patch normalised units: show them with the true patch's
            # mean and spread (as MAE's own figures do), since the model never predicts those.
            mean = target.mean(-1, keepdims=True)
            pred = pred * jnp.sqrt(patch_variance(target) + 1e-6) + mean  # the loss's variance
        m = mask[..., None]
        masked_input = target * (1 - m) + MASKED_GRAY * m
        pasted = target * (1 - m) + jnp.clip(pred, 0.0, 1.0) * m
        h, w, _ = self.spec.shape
        images = (unpatchify(x, self.model.patch, h, w) for x in (masked_input, pasted))
        return dict(zip(('originals', 'masked_inputs', 'reconstructions'), (pixels, *images)))

    def pictures(self, params, rng, examples):
        """In [0, 1]: the examples, their masked inputs and their reconstructions with the
        visible patches pasted back."""
        return self._reconstruct(params, jnp.asarray(examples['image']), rng)

    def save_samples(self, outputs, path_stem):
        samples = np.stack([outputs[k] for k in ('originals', 'masked_inputs', 'reconstructions')])
        _, num, h, w, c = samples.shape
        cols = min(num, 10)
        blocks = []  # per block of `cols` images: a row of originals, masked inputs, outputs
        for start in range(0, num, cols):
            block = samples[:, start:start + cols]
            pad = np.full((3, cols - block.shape[1], h, w, c), MASKED_GRAY, block.dtype)
            blocks.append(np.concatenate([block, pad], axis=1).reshape(3 * cols, h, w, c))
        return [self.save_image_grid(np.concatenate(blocks), path_stem + '.png', num_levels=2,
                                     cols=cols)]


TASK = MAETask
