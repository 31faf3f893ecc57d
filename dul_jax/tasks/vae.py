"""Variational autoencoder (Kingma & Welling 2014) with the importance-weighted bound (Burda et al.
2016): a diagonal Gaussian posterior q(z|x) through the reparameterisation trick, a standard
normal prior, and a decoder p(x|z) over the data's discrete levels: Bernoulli (2 levels),
categorical, or a discretized logistic mixture.

Training minimises the negative ELBO, E_q[-log p(x|z)] + beta KL(q(z|x) || p(z)) with the KL in
closed form (optionally with free bits and a linear KL warm-up), or with
`model.objective = 'iwae'` the negative IWAE bound on `model.train_samples` samples. The loss is
in nats per dimension; eval reports the negative ELBO in nats per image and bits/dim.
Evaluators: `iwae` (the bound at large k), `posterior` (active units, KL per latent dimension),
`bound` (reconstruction + KL), `probe` (on the posterior means), `fid` (decoded samples).
Pictures: samples (the decoder's mean), test images beside their reconstructions, and latent
interpolations between test images.
"""

import jax
import jax.numpy as jnp
import numpy as np

from dul_jax.config import check
from dul_jax.losses import latent, pixels
from dul_jax.losses.gaussian import levels_to_unit
from dul_jax.losses.likelihood import bits_per_dim
from dul_jax.model_configs import vae as default_model_config  # noqa: F401 (the contract)
from dul_jax.models.vae import VAE
from dul_jax.tasks.base import LossOut, Task, jit_method
from dul_jax.tasks.capabilities import (
    Bounds,
    Features,
    Generates,
    ImportanceWeights,
    Pictures,
    PixelLikelihood,
    Posterior,
    SampleImages,
)

OBJECTIVES = ('elbo', 'iwae')
INTERPOLATION_STEPS = 10


class VAETask(Task, Bounds, Features, Generates, ImportanceWeights, Pictures, PixelLikelihood,
              Posterior, SampleImages):

    def validate(self):
        super().validate()
        self.require_images()
        self.require_pixel_likelihood()
        m, spec = self.cfg.model, self.spec
        check(m.objective in OBJECTIVES,
              f'model.objective must be "elbo" or "iwae", got "{m.objective}".')
        check(m.latent_dim > 0 and m.train_samples >= 1,
              'model.latent_dim and model.train_samples must be positive.')
        check(m.beta >= 0 and m.free_bits >= 0 and m.kl_warmup_steps >= 0,
              'model.beta, model.free_bits and model.kl_warmup_steps must be >= 0.')
        check(m.objective == 'elbo' or (m.beta == 1 and m.free_bits == 0
                                        and m.kl_warmup_steps == 0),
              'model.beta, model.free_bits and model.kl_warmup_steps change the ELBO only; with '
              'model.objective="iwae" leave them at 1, 0 and 0.')
        h, w, _ = spec.shape
        scale = 2 ** len(m.channels)
        check(h % scale == 0 and w % scale == 0,
              f'model.channels has {len(m.channels)} stages, each halving the image, but the '
              f'{h}x{w} images of "{spec.name}" are not divisible by {scale}; use fewer stages.')

    def build_model(self):
        m = self.cfg.model
        out = pixels.outputs_per_value(m.likelihood, self.spec.num_levels, m.mixtures)
        return VAE(image_shape=tuple(self.spec.shape), channels=tuple(m.channels),
                   hidden=tuple(m.hidden), latent_dim=m.latent_dim, out_per_value=out,
                   dtype=self.dtype)

    def example_size(self):
        return int(np.prod(self.spec.shape))

    def init(self, rng, batch):
        z = jnp.zeros((batch['image'].shape[0], self.cfg.model.latent_dim))
        return self.model.init(rng, self._unit(batch['image']), z)['params']

    # ---- the model's pieces (also the capabilities of evaluators and bits-back coding) --------

    def _unit(self, levels):
        return levels_to_unit(levels, self.spec.num_levels)

    def posterior(self, params, levels):
        """q(z|x) of (B, H, W, C) levels: mean and log-variance, each (B, latent_dim)."""
        return self.model.apply({'params': params}, self._unit(levels), method=VAE.encode)

    def pixel_log_probs(self, params, z):
        """log p(x|z) of every level of every pixel value: (B, H, W, C, levels), normalised."""
        out = self.model.apply({'params': params}, z, method=VAE.decode)
        return self._log_probs(out)

    def _log_probs(self, out):
        return pixels.log_probs(self.cfg.model.likelihood, out, self.spec.num_levels)

    def _reconstruction_nll(self, params, z, levels):
        """-log p(x|z) in nats per image: z (B, k, D), levels (B, H, W, C) -> (B, k)."""
        b, k, d = z.shape
        out = self.model.apply({'params': params}, z.reshape(b * k, d), method=VAE.decode)
        out = out.reshape((b, k) + out.shape[1:])
        x = jnp.broadcast_to(levels[:, None], (b, k) + levels.shape[1:])
        nll = pixels.nll(self.cfg.model.likelihood, out, x, self.spec.num_levels)
        return nll.reshape(b, k, -1).sum(-1)

    def _draw(self, mean, log_var, rng, k):
        """k reparameterised posterior samples per example: (B, k, D)."""
        eps = jax.random.normal(rng, (mean.shape[0], k, mean.shape[1]))
        return mean[:, None] + jnp.exp(0.5 * log_var)[:, None] * eps

    def log_importance_weights(self, params, batch, rng, num: int):
        """log p(x, z_i) - log q(z_i | x) for `num` posterior samples per example: (B, num)."""
        levels = batch['image']
        mean, log_var = self.posterior(params, levels)
        z = self._draw(mean, log_var, rng, num)
        log_prior = latent.standard_normal_log_prob(z).sum(-1)
        log_q = latent.gaussian_log_prob(z, mean[:, None], log_var[:, None]).sum(-1)
        return -self._reconstruction_nll(params, z, levels) + log_prior - log_q

    def bound_terms(self, params, batch, rng):
        """The negative ELBO's two terms in nats per image: -log p(x|z) at one posterior sample,
        and the analytic KL."""
        mean, log_var = self.posterior(params, batch['image'])
        z = self._draw(mean, log_var, rng, 1)
        return {'reconstruction': self._reconstruction_nll(params, z, batch['image'])[:, 0],
                'kl': latent.kl_to_standard_normal(mean, log_var).sum(-1)}

    def features(self, params, levels):
        return self.posterior(params, levels)[0]

    # ---- training and eval -------------------------------------------------------------------

    def loss(self, params, batch, rng, ctx):
        m, dims = self.cfg.model, self.example_size()
        mean, log_var = self.posterior(params, batch['image'])
        kl = latent.kl_to_standard_normal(mean, log_var)
        z = self._draw(mean, log_var, rng, m.train_samples)
        rec = self._reconstruction_nll(params, z, batch['image'])          # (B, k)
        if m.objective == 'iwae':
            log_q = latent.gaussian_log_prob(z, mean[:, None], log_var[:, None]).sum(-1)
            log_w = -rec + latent.standard_normal_log_prob(z).sum(-1) - log_q
            objective = -latent.iwae_bound(log_w)
        else:
            beta = m.beta
            if m.kl_warmup_steps:
                beta = beta * jnp.minimum(ctx.step / m.kl_warmup_steps, 1.0)
            objective = rec.mean(-1) + beta * latent.free_bits_kl(kl, m.free_bits)
        nelbo = rec.mean(-1) + kl.sum(-1)
        loss = objective.mean() / dims
        return LossOut(loss, {'loss': loss, 'nats_per_image': nelbo.mean(),
                              'kl': kl.sum(-1).mean(), 'reconstruction': rec.mean()})

    def eval_metrics(self, params, batch, rng):
        terms = self.bound_terms(params, batch, rng)
        nelbo = terms['reconstruction'] + terms['kl']
        dims = self.example_size()
        return {'loss': nelbo / dims, 'nats_per_image': nelbo,
                'bits_per_dim': bits_per_dim(nelbo, dims), **terms}

    # ---- samples and pictures ----------------------------------------------------------------

    def _prior_draw(self, rng, num):
        return self.cfg.sample.temperature * jax.random.normal(
            rng, (num, self.cfg.model.latent_dim))

    def _generate(self, params, rng, num):
        """Levels drawn from p(x|z) at `num` prior draws z, and the decoder's mean in [0, 1]."""
        z_rng, x_rng = jax.random.split(rng)
        log_probs = self.pixel_log_probs(params, self._prior_draw(z_rng, num))
        return (jax.random.categorical(x_rng, log_probs).astype(jnp.uint8),
                pixels.mean_in_unit_range(log_probs))

    @jit_method('num')
    def sample_images(self, params, rng, num):
        """(num, H, W, C) levels drawn from p(x|z), z from the prior."""
        return self._generate(params, rng, num)[0]

    @jit_method('num')
    def sample(self, params, rng, num):
        """Levels drawn from p(x|z) at prior draws z, and the decoder's mean at the same z
        ('sample_means', the picture: independent pixel draws are grainy)."""
        levels, means = self._generate(params, rng, num)
        return {'samples': levels, 'sample_means': means}

    @jit_method()
    def _pictures(self, params, levels):
        num = levels.shape[0]
        mean, _ = self.posterior(params, levels)
        reconstructions = pixels.mean_in_unit_range(self.pixel_log_probs(params, mean))
        # each test image to the next one, in INTERPOLATION_STEPS even steps of the posterior mean
        weights = jnp.linspace(0.0, 1.0, INTERPOLATION_STEPS)[None, :, None]
        path = (1 - weights) * mean[:, None] + weights * jnp.roll(mean, -1, axis=0)[:, None]
        between = pixels.mean_in_unit_range(self.pixel_log_probs(
            params, path.reshape(-1, mean.shape[-1])))
        originals = levels.astype(jnp.float32) / (self.spec.num_levels - 1)
        return {'originals': originals, 'reconstructions': reconstructions,
                'interpolations': between.reshape((num, INTERPOLATION_STEPS) + levels.shape[1:])}

    def pictures(self, params, rng, examples):
        """In [0, 1]: the examples, their reconstructions (at the posterior mean), and
        interpolations from each to the next."""
        return self._pictures(params, jnp.asarray(examples['image']))

    def save_samples(self, outputs, path_stem):
        paths = []
        if 'sample_means' in outputs:
            means = outputs['sample_means']
            num, cols = len(means), min(len(means), 10)
            pad = np.zeros((-num % cols,) + means.shape[1:], np.float32)
            paths.append(self.save_image_grid(np.concatenate([means, pad]), path_stem + '.png',
                                              num_levels=2, cols=cols))
        if 'originals' in outputs:
            num, h, w, c = outputs['originals'].shape
            interpolations = outputs['interpolations'][:min(num, 8)]
            paths += [
                self.save_reconstruction_grid(outputs['originals'], outputs['reconstructions'],
                                              path_stem + '_reconstructions.png', min(num, 10)),
                self.save_image_grid(interpolations.reshape((-1, h, w, c)),
                                     path_stem + '_interpolations.png', num_levels=2,
                                     cols=INTERPOLATION_STEPS)]
        return paths


TASK = VAETask
