"""VQ-VAE (van den Oord et al. 2017): a conv encoder to a grid of D-dimensional vectors, each
replaced by its nearest of K codebook vectors, and a conv decoder p(x | z_q) over the data's
discrete levels (Bernoulli for 2 levels, categorical, or a discretized logistic mixture).

Training minimises -log p(x | z_q) in nats per dimension, plus the codebook loss
||sg(z_e) - e||^2 and the commitment loss beta ||z_e - sg(e)||^2, each averaged over the latent
grid's elements (as in the paper's code), with the straight-through estimator carrying the
decoder's gradient to the encoder (losses/vq.py). The codebook is learnt by that gradient
(`model.codebook_update = 'gradient'`) or, as in the paper's appendix and Sonnet, set after each
step from running averages of the encoder outputs each code is assigned (`'ema'`, no codebook
loss; the averages are the train state's model state). With `'ema'`, `model.restart_threshold`
moves codes used less than that many times per step (on average) to random encoder outputs of the
batch (Jukebox's restarts), so that the codebook does not collapse.

Eval reports per example the decoder's -log p(x | z_q) in nats per image and bits/dim (a
reconstruction cost, not a likelihood of x: that needs a prior over the codes), the MSE of the
decoder's mean in [0, 1] units, and the perplexity exp(H) of code usage over each eval batch.
Pictures: test images over their reconstructions.

Two stages: `export_codes` writes the code grids of the splits it is given as an `arrays:`
data set (data/arrays.py), on which the `autoregressive` task trains unchanged as the prior;
`images_from_codes` decodes the prior's samples (experiments/vqvae_two_stage.py).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dul_jax.config import check
from dul_jax.data import arrays
from dul_jax.losses import pixels, vq
from dul_jax.losses.gaussian import levels_to_unit
from dul_jax.losses.likelihood import bits_per_dim
from dul_jax.model_configs import vqvae as default_model_config  # noqa: F401 (the contract)
from dul_jax.models.vqvae import VQVAE
from dul_jax.tasks.base import LossOut, Task, jit_method
from dul_jax.tasks.capabilities import Features, ModelState, Pictures

MAX_CODES = 65536   # code grids are exported as uint16 levels at most
CODEBOOK_UPDATES = ('gradient', 'ema')
DECODE_CHUNK = 8    # examples whose level probabilities are made at once


class VQVAETask(Task, Features, ModelState, Pictures):
    embedding_names = ('codebook',)

    def validate(self):
        super().validate()
        self.require_images()
        self.require_pixel_likelihood()
        m, spec = self.cfg.model, self.spec
        check(2 <= m.num_codes <= MAX_CODES,
              f'model.num_codes must be in [2, {MAX_CODES}], got {m.num_codes}.')
        check(min(m.code_dim, m.hidden, m.res_channels) > 0,
              'model.code_dim, model.hidden and model.res_channels must be positive.')
        check(m.res_blocks >= 0 and m.beta >= 0, 'model.res_blocks and model.beta must be >= 0.')
        check(m.stages >= 1, f'model.stages (stride-2 stages) must be >= 1, got {m.stages}.')
        check(m.codebook_update in CODEBOOK_UPDATES, 'model.codebook_update must be "gradient" '
              f'or "ema", got "{m.codebook_update}".')
        check(0 < m.ema_decay < 1, f'model.ema_decay must be in (0, 1), got {m.ema_decay}.')
        check(m.restart_threshold >= 0 and (m.restart_threshold == 0 or self.ema),
              f'model.restart_threshold={m.restart_threshold} needs a value >= 0 and '
              '--config.model.codebook_update=ema (restarts reset running averages).')
        h, w, _ = spec.shape
        scale = 2 ** m.stages
        check(m.hidden % scale == 0, f'model.hidden={m.hidden} must be a multiple of '
              f'2^model.stages={scale} (the width halves at each upsampling stage).')
        check(h % scale == 0 and w % scale == 0,
              f'model.stages={m.stages} halves the image {m.stages} times, but the {h}x{w} images '
              f'of "{spec.name}" are not divisible by {scale}; use fewer stages.')

    def build_model(self):
        m = self.cfg.model
        out = pixels.outputs_per_value(m.likelihood, self.spec.num_levels, m.mixtures)
        return VQVAE(image_shape=tuple(self.spec.shape), stages=m.stages, hidden=m.hidden,
                     res_channels=m.res_channels, res_blocks=m.res_blocks, code_dim=m.code_dim,
                     num_codes=m.num_codes, out_per_value=out, dtype=self.dtype)

    def example_size(self):
        return int(np.prod(self.spec.shape))

    @property
    def grid_shape(self) -> tuple[int, int]:
        """(h, w) of the code grid."""
        h, w, _ = self.spec.shape
        return h // 2 ** self.cfg.model.stages, w // 2 ** self.cfg.model.stages

    @property
    def ema(self) -> bool:
        return self.cfg.model.codebook_update == 'ema'

    def init(self, rng, batch):
        return self.model.init(rng, self._unit(batch['image']))['params']

    def init_model_state(self, rng, batch):
        """The codebook's running averages ({} when it learns by gradient). `rng` is init's, so
        they start at the codebook param."""
        if not self.ema:
            return {}
        return vq.ema_init(nn.meta.unbox(self.init(rng, batch)['codebook']))

    def assign_params(self, params, model_state):
        """The codebook param set from the running averages (unchanged when learnt by gradient:
        the optimizer's step on it is the codebook loss's)."""
        if not self.ema:
            return params
        return {**params, 'codebook': vq.ema_codebook(model_state).astype(
            params['codebook'].dtype)}

    # ---- the model's pieces ---------------------------------------------------------------

    def _unit(self, levels):
        return levels_to_unit(levels, self.spec.num_levels)

    def _encode(self, params, levels):
        """z_e (B, h, w, D) and the codebook (K, D)."""
        z_e = self.model.apply({'params': params}, self._unit(levels), method=VQVAE.encode)
        return z_e, self.model.apply({'params': params}, method=VQVAE.codes)

    def _decode(self, params, z_q):
        return self.model.apply({'params': params}, z_q, method=VQVAE.decode)

    @jit_method()
    def encode_codes(self, params, levels):
        """The code grid of (B, H, W, C) levels: int32 (B, h, w), argmin_k ||z_e - e_k||^2."""
        z_e, codebook = self._encode(params, levels)
        return vq.nearest_codes(z_e, codebook)

    def _log_probs(self, out):
        """log p(x | z) of every level of every pixel value: (B, H, W, C, levels)."""
        return pixels.log_probs(self.cfg.model.likelihood, out, self.spec.num_levels)

    def _nll(self, out, levels):
        """-log p(x | z_q) in nats per image: (B,)."""
        nll = pixels.nll(self.cfg.model.likelihood, out, levels, self.spec.num_levels)
        return nll.reshape(nll.shape[0], -1).sum(-1)

    def _decoded(self, out):
        """The decoder's most likely level of each pixel value (int32) and its mean in [0, 1],
        sum_l p(l) l / (L - 1), from its output (B, H, W, C, out_per_value). The probabilities
        of all L levels are made DECODE_CHUNK examples at a time: at 256 levels and 5 logistics
        a whole eval batch of them would take gigabytes."""
        def one(o):
            log_probs = self._log_probs(o[None])[0]
            return (jnp.argmax(log_probs, axis=-1).astype(jnp.int32),
                    pixels.mean_in_unit_range(log_probs))

        return jax.lax.map(one, out, batch_size=DECODE_CHUNK)

    def _forward(self, params, levels):
        """Everything one pass computes: the decoder's output at the straight-through z_q, the
        per-example VQ terms (B,) averaged over latent elements, the codes (B, h, w) and the
        encoder's outputs z_e (B, h, w, D)."""
        z_e, codebook = self._encode(params, levels)
        z_q, codes = vq.quantize(z_e, codebook)
        out = self._decode(params, vq.straight_through(z_e, z_q))
        d = z_e.shape[-1]
        per_example = lambda t: t.reshape(t.shape[0], -1).mean(-1) / d
        terms = {'codebook': per_example(vq.codebook_loss(z_e, z_q)),
                 'commitment': per_example(vq.commitment_loss(z_e, z_q, self.cfg.model.beta))}
        return out, terms, codes, z_e

    # ---- training and eval ----------------------------------------------------------------

    def loss(self, params, batch, rng, ctx):
        m, levels, model_state = self.cfg.model, batch['image'], ctx.model_state
        out, terms, codes, z_e = self._forward(params, levels)
        rec = self._nll(out, levels) / self.example_size()     # nats/dim per example
        # with 'ema' the codebook term is only reported: the averages move the codes
        loss = (rec + terms['commitment'] + (0.0 if self.ema else terms['codebook'])).mean()
        usage = vq.perplexity(vq.code_frequencies(codes, m.num_codes))
        metrics = {'loss': loss, 'reconstruction': rec.mean(),
                   'bits_per_dim': bits_per_dim(rec.mean(), 1),
                   'codebook': terms['codebook'].mean(),
                   'commitment': terms['commitment'].mean(), 'perplexity': usage}
        if self.ema:
            model_state = vq.ema_update(model_state, z_e, codes, m.ema_decay)
            if m.restart_threshold:
                model_state, metrics['restarted'] = vq.restart_dead_codes(
                    model_state, z_e, rng, m.restart_threshold)
        return LossOut(loss, metrics, model_state)

    def eval_metrics(self, params, batch, rng):
        levels = batch['image']
        out, terms, codes, _ = self._forward(params, levels)
        nll = self._nll(out, levels)
        dims = self.example_size()
        mean = self._decoded(out)[1]
        target = levels.astype(jnp.float32) / (self.spec.num_levels - 1)
        mse = ((mean - target) ** 2).reshape(mean.shape[0], -1).mean(-1)
        mask = batch.get('mask', jnp.ones(levels.shape[:1], jnp.float32))
        usage = vq.perplexity(vq.code_frequencies(codes, self.cfg.model.num_codes,
                                                  mask[:, None, None]))
        codebook = 0.0 if self.ema else terms['codebook']   # the trained objective
        return {'loss': nll / dims + codebook + terms['commitment'],
                'nats_per_image': nll, 'bits_per_dim': bits_per_dim(nll, dims), 'mse': mse,
                'perplexity': jnp.broadcast_to(usage, nll.shape), **terms}

    def features(self, params, levels):
        """The code vectors z_q averaged over the grid: (B, D)."""
        z_e, codebook = self._encode(params, levels)
        return vq.quantize(z_e, codebook)[0].mean(axis=(1, 2))

    # ---- the second stage -----------------------------------------------------------------

    @jit_method()
    def images_from_codes(self, params, codes):
        """Images of (B, h, w) code grids: the decoder's most likely level of each pixel value
        (uint8 or uint16 (B, H, W, C)) and its mean in [0, 1]."""
        codebook = self.model.apply({'params': params}, method=VQVAE.codes)
        mode, mean = self._decoded(self._decode(params, vq.lookup(codes, codebook)))
        return mode.astype(jnp.uint8 if self.spec.num_levels <= 256 else jnp.uint16), mean

    def export_codes(self, params, splits: dict, directory: str) -> dict:
        """Write the code grids of `splits` ({split name: its eval batches, with 'image', 'label'
        and 'mask'}, e.g. from data.eval_batches) as an `arrays:` data set in the local folder
        `directory` (levels = codes, K of them; labels kept). Returns its info."""
        grids_of = {}
        for split, batches in splits.items():
            grids, labels = [], []
            for batch in batches:
                keep = np.asarray(batch['mask']) > 0
                codes = np.asarray(self.encode_codes(params, jnp.asarray(batch['image'])))
                grids.append(codes[keep][..., None])
                labels.append(np.asarray(batch['label'])[keep])
            grids_of[split] = (np.concatenate(grids), np.concatenate(labels))
        return arrays.write(directory, grids_of, num_levels=self.cfg.model.num_codes,
                            num_classes=self.spec.num_classes,
                            description=f'VQ-VAE code grids of {self.spec.name}')

    # ---- pictures -------------------------------------------------------------------------

    @jit_method()
    def _pictures(self, params, levels):
        z_e, codebook = self._encode(params, levels)
        z_q, _ = vq.quantize(z_e, codebook)
        reconstructions = self._decoded(self._decode(params, z_q))[1]
        return {'originals': levels.astype(jnp.float32) / (self.spec.num_levels - 1),
                'reconstructions': reconstructions}

    def pictures(self, params, rng, examples):
        """In [0, 1]: the examples and their reconstructions (the decoder's mean at the quantised
        codes). A VQ-VAE alone has no prior to sample from, so it does not generate."""
        return self._pictures(params, jnp.asarray(examples['image']))

    def save_samples(self, outputs, path_stem):
        return [self.save_reconstruction_grid(outputs['originals'], outputs['reconstructions'],
                                              path_stem + '.png')]


TASK = VQVAETask
