"""Denoising diffusion (DDPM / DDIM) on images, with a U-Net or a DiT and classifier-free guidance.

Pixels (levels 0..K-1) become values in [-1, 1], padded with -1 to `model.image_size` if asked.
Training draws t uniformly from 1..T, noises x_0 to x_t and regresses the configured target
(eps, v or x_0) with the configured weighting; labels are replaced by the null class with
probability `model.label_dropout`, so one network is both conditional and unconditional.
Sampling (from EMA params) runs DDPM ancestral or DDIM steps (sampling/diffusion.py) in one jitted
`lax` loop. `bound_terms` gives the variational bound for the shared bound evaluator
(`eval.evaluators = ('bound',)`); `sample_images` the images that the FID evaluator scores.
The sampler's keys (sample.sampler, steps, eta, guidance, guidance_sweep, clip_x0) are added by
experiments/configs/diffusion_defaults.py.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from dul_jax import images
from dul_jax.config import check
from dul_jax.losses import diffusion as dl
from dul_jax.losses import gaussian
from dul_jax.model_configs import diffusion as default_model_config  # noqa: F401 (the contract)
from dul_jax.models.dit import DiT
from dul_jax.models.unet import UNet
from dul_jax.sampling import diffusion as samplers
from dul_jax.tasks.base import LossOut, Task, jit_method
from dul_jax.tasks.capabilities import Bounds, Generates, SampleImages


class DiffusionTask(Task, Bounds, Generates, SampleImages):

    @property
    def width_keys(self):
        """µP's width keys: the DiT's (the U-Net has no µP here)."""
        return ('embed_dim', 'mlp_dim', 'num_heads') if self.cfg.model.kind == 'dit' else ()

    def __init__(self, cfg, spec):
        m = cfg.model
        self.height, self.width, self.channels = spec.shape if spec.is_image else (0,) * 3
        self.size = int(m.image_size) or max(self.height, self.width)
        self.null_class = spec.num_classes
        self.num_steps = int(m.num_steps)
        super().__init__(cfg, spec)
        self.alpha_bars = dl.discrete_alpha_bars(m.schedule, self.num_steps)
        # float64 posterior constants for the bound, cast to float32 only where used
        self.tables = dl.posterior_tables(dl.discrete_betas(m.schedule, self.num_steps))

    def build_model(self):
        m = self.cfg.model
        common = {'num_heads': m.num_heads, 'dropout': m.dropout,
                  'num_classes': self.spec.num_classes if self.conditional else 0,
                  'dtype': self.dtype, 'kernels': self.kernels}
        if m.kind == 'dit':
            return DiT(patch=m.patch, embed_dim=m.embed_dim, num_layers=m.num_layers,
                       mlp_dim=m.mlp_dim, remat=m.remat, scan_unroll=m.scan_unroll,
                       **common)
        return UNet(channels=m.channels, channel_mults=tuple(m.channel_mults),
                    num_res_blocks=m.num_res_blocks, attn_resolutions=tuple(m.attn_resolutions),
                    groups=m.groups, **common)

    def validate(self):
        super().validate()
        self.require_images()
        m, s = self.cfg.model, self.cfg.sample
        for key, allowed in (('kind', ('unet', 'dit')), ('schedule', dl.SCHEDULES),
                             ('prediction', dl.PREDICTIONS), ('weighting', dl.WEIGHTINGS)):
            check(m[key] in allowed, f'model.{key} must be one of {", ".join(allowed)}, '
                                     f'got "{m[key]}".')
        check(m.num_steps >= 2, f'model.num_steps must be at least 2, got {m.num_steps}.')
        check(m.vlb_decoder_variance in dl.DECODER_VARIANCES, 'model.vlb_decoder_variance must '
              f'be one of {", ".join(dl.DECODER_VARIANCES)}, got "{m.vlb_decoder_variance}".')
        check(0.0 <= m.label_dropout < 1.0,
              f'model.label_dropout must be in [0, 1), got {m.label_dropout}.')
        check(self.size >= max(self.height, self.width),
              f'model.image_size={self.size} is smaller than the {self.height}x{self.width} '
              'images; set it to 0 or at least their size.')
        self._validate_network(m)
        check(s.sampler in samplers.SAMPLERS,
              f'sample.sampler must be "ddpm" or "ddim", got "{s.sampler}".')
        check(0 <= s.steps <= m.num_steps,
              f'sample.steps must be in [0, model.num_steps={m.num_steps}], got {s.steps}.')
        check(s.eta >= 0, f'sample.eta must be >= 0, got {s.eta}.')
        cfg_ready = self.conditional and m.label_dropout > 0
        check(cfg_ready or (s.guidance == 1.0 and not s.guidance_sweep),
              'classifier-free guidance (sample.guidance != 1 or a sample.guidance_sweep) needs a '
              'class-conditional model trained with model.label_dropout > 0; set those or '
              'sample.guidance=1 and sample.guidance_sweep=().')

    def _validate_network(self, m):
        if m.kind == 'unet':
            check(m.num_res_blocks >= 0,
                  f'model.num_res_blocks must be >= 0, got {m.num_res_blocks}.')
            halvings = len(m.channel_mults) - 1
            check(self.size % 2 ** halvings == 0,
                  f'the U-Net halves a {self.size}x{self.size} image {halvings} times; use fewer '
                  'model.channel_mults or pad with model.image_size (e.g. 32 for 28x28).')
            for mult in m.channel_mults:
                width = mult * m.channels
                check(width % m.groups == 0 and width % m.num_heads == 0,
                      f'U-Net width {width} (model.channels x {mult}) must be a multiple of '
                      f'model.groups={m.groups} and model.num_heads={m.num_heads}.')
        else:
            check(self.size % m.patch == 0, f'model.patch={m.patch} does not tile '
                  f'{self.size}x{self.size} images; choose a divisor or set model.image_size.')
            check(m.embed_dim % m.num_heads == 0 and m.embed_dim % 4 == 0,
                  f'model.embed_dim={m.embed_dim} must be a multiple of 4 and of '
                  f'model.num_heads={m.num_heads}.')
            check(m.remat in ('none', 'full', 'dots'),
                  f'model.remat must be "none", "full" or "dots", got "{m.remat}".')

    def example_size(self):
        return self.height * self.width * self.channels

    # ---- model inputs ------------------------------------------------------------------------

    def to_model_space(self, levels):
        """uint8 levels (B, H, W, C) -> floats in [-1, 1], padded with -1 to (size, size)."""
        x = gaussian.levels_to_unit(jnp.asarray(levels), self.spec.num_levels)
        pad_h, pad_w = self.size - self.height, self.size - self.width
        if pad_h or pad_w:
            x = jnp.pad(x, ((0, 0), (pad_h // 2, pad_h - pad_h // 2),
                            (pad_w // 2, pad_w - pad_w // 2), (0, 0)), constant_values=-1.0)
        return x

    def to_levels(self, x):
        """Model-space images -> uint8 levels of the data's own size (padding cropped)."""
        top, left = (self.size - self.height) // 2, (self.size - self.width) // 2
        x = x[:, top:top + self.height, left:left + self.width]
        k = self.spec.num_levels - 1
        return jnp.clip(jnp.round((x + 1.0) * (k / 2.0)), 0, k).astype(jnp.uint8)

    def apply(self, params, x, t, labels, dropout_rng=None):
        kwargs = {}
        if dropout_rng is not None and self.cfg.model.dropout > 0:
            kwargs = {'rngs': {'dropout': dropout_rng}, 'deterministic': False}
        return self.model.apply({'params': params}, x, t, labels, **kwargs)

    def _ab(self, t):
        """alpha_bar at integer steps t (any shape), float32; alpha_bar_0 = 1."""
        return jnp.asarray(self.alpha_bars, jnp.float32)[t]

    def init(self, rng, batch):
        x = self.to_model_space(batch['image'][:1])
        labels = jnp.zeros((1,), jnp.int32) if self.conditional else None
        return self.model.init(rng, x, jnp.ones((1,), jnp.int32), labels)['params']

    # ---- training and evaluation -------------------------------------------------------------

    def _loss_terms(self, params, batch, rng, train: bool):
        m = self.cfg.model
        x0 = self.to_model_space(batch['image'])
        b = x0.shape[0]
        k_t, k_eps, k_drop, k_dropout = jax.random.split(rng, 4)
        t = jax.random.randint(k_t, (b,), 1, self.num_steps + 1)
        eps = jax.random.normal(k_eps, x0.shape, jnp.float32)
        ab = self._ab(t)
        ab4 = ab[:, None, None, None]
        x_t = dl.q_sample(x0, ab4, eps)
        labels = self.labels(batch)
        if self.conditional and train and m.label_dropout > 0:
            drop = jax.random.bernoulli(k_drop, m.label_dropout, (b,))
            labels = jnp.where(drop, self.null_class, labels)
        out = self.apply(params, x_t, t, labels, k_dropout if train else None)
        loss = dl.diffusion_loss(out, x0, eps, ab, m.prediction, m.weighting, m.snr_gamma)
        _, eps_hat = dl.to_x0_eps(m.prediction, out, x_t, ab4)
        mse_eps = ((eps_hat - eps) ** 2).reshape(b, -1).mean(axis=-1)
        return loss, mse_eps

    def loss(self, params, batch, rng, ctx):
        loss, mse_eps = self._loss_terms(params, batch, rng, train=True)
        loss = loss.mean()
        return LossOut(loss, {'loss': loss, 'mse_eps': mse_eps.mean()})

    def eval_metrics(self, params, batch, rng):
        loss, mse_eps = self._loss_terms(params, batch, rng, train=False)
        return {'loss': loss, 'mse_eps': mse_eps}

    # ---- the variational bound ---------------------------------------------------------------

    def bound_terms(self, params, batch, rng):
        """Per-example terms of -log p(x_0) <= L_T + sum_{t=2}^T L_{t-1} + L_0, in nats:
        {'prior': L_T, 'diffusion': the sum of the L_{t-1}, 'decoder': L_0}.

        L_T = KL(q(x_T | x_0) || N(0, I)); L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t))
        with p's mean the posterior mean at the predicted x_0 and its variance the posterior's,
        at one draw of x_t ~ q(x_t | x_0) per t; L_0 = -log of the discretized Gaussian
        decoder N(x0_hat(x_1), var) over the data's levels, var from model.vlb_decoder_variance
        (default: DDPM's clipped posterior variance, i.e. that of t = 2). Coefficients come from
        float64 tables (dl.posterior_tables). Padding is part of x_0, so the sum bounds -log p
        of the padded image, which bounds -log p of the image itself. Unconditional (null
        class) where the model was trained with label dropout, so it compares with unconditional
        likelihood models; conditional on the true label otherwise.
        """
        x0 = self.to_model_space(batch['image'])
        labels = self.labels(batch)
        if labels is not None and self.cfg.model.label_dropout > 0:
            labels = jnp.full_like(labels, self.null_class)
        per_example = lambda v: v.reshape(v.shape[0], -1).sum(axis=-1)
        ab_T = self._ab(self.num_steps)
        prior = per_example(gaussian.gaussian_kl(jnp.sqrt(ab_T) * x0, 1.0 - ab_T, 0.0, 1.0))
        tab = {k: jnp.asarray(v, jnp.float32) for k, v in self.tables.items()}
        # As hojonathanho/diffusion diffusion_utils_2.py _vb_terms_bpd: the decoder's mean is the
        # posterior mean at x0_hat for t = 1, which is x0_hat (coef1 = 1, coef2 = 0).
        decoder_std = float(np.exp(0.5 * dl.decoder_log_variance(
            self.tables, self.cfg.model.vlb_decoder_variance)))

        def term(t):
            ab_t = self._ab(t)
            eps = jax.random.normal(jax.random.fold_in(rng, t), x0.shape, jnp.float32)
            x_t = dl.q_sample(x0, ab_t, eps)
            x0_hat, _ = self._predict_x0_eps(params, x_t, t, labels, 1.0, False)
            c1, c2 = tab['posterior_mean_coef1'][t], tab['posterior_mean_coef2'][t]
            mean, mean_hat = c1 * x0 + c2 * x_t, c1 * x0_hat + c2 * x_t
            var = tab['posterior_variance_clipped'][t]  # > 0 at t = 1 too (the decoder's step)
            kl = per_example(gaussian.gaussian_kl(mean, var, mean_hat, var))
            nll = per_example(gaussian.discretized_gaussian_nll(x0, x0_hat, decoder_std,
                                                           self.spec.num_levels))
            return jnp.where(t == 1, nll, kl)

        def body(t, totals):
            diffusion, decoder = totals
            value = term(t)
            return (diffusion + jnp.where(t > 1, value, 0.0),
                    decoder + jnp.where(t == 1, value, 0.0))

        zeros = jnp.zeros(x0.shape[0], jnp.float32)
        diffusion, decoder = jax.lax.fori_loop(1, self.num_steps + 1, body, (zeros, zeros))
        return {'prior': prior, 'diffusion': diffusion, 'decoder': decoder}

    # ---- sampling ----------------------------------------------------------------------------

    def _predict_x0_eps(self, params, x_t, t, labels, guidance, use_cfg: bool):
        """Clipped x_0 and the eps consistent with it, from the (guided) network at step t."""
        t_vec = jnp.full((x_t.shape[0],), t, jnp.int32)
        apply_fn = functools.partial(self.apply, params)
        if use_cfg:
            out = samplers.guided_output(apply_fn, x_t, t_vec, labels, self.null_class,
                                         guidance)
        else:
            out = apply_fn(x_t, t_vec, labels)
        ab = self._ab(t)
        x0, eps = dl.to_x0_eps(self.cfg.model.prediction, out, x_t, ab)
        if self.cfg.sample.clip_x0:
            x0 = jnp.clip(x0, -1.0, 1.0)
            eps = dl.eps_from_x0(x0, x_t, ab)
        return x0, eps

    @jit_method('num', 'sampler', 'steps', 'use_cfg')
    def sample_x(self, params, rng, num, sampler, steps, labels, eta, guidance, use_cfg,
                 x_init=None):
        """(num, size, size, C) model-space samples from x_T = `x_init` (else drawn from rng)
        over `steps` steps of `sampler` (see sampling/diffusion.py)."""
        init_rng, step_rng = jax.random.split(rng)
        x = x_init if x_init is not None else jax.random.normal(
            init_rng, (num, self.size, self.size, self.channels), jnp.float32)
        denoise = functools.partial(self._predict_x0_eps, params, labels=labels,
                                    guidance=guidance, use_cfg=use_cfg)
        return samplers.sample(denoise, jnp.asarray(self.alpha_bars, jnp.float32), x, step_rng,
                               self.num_steps, steps, sampler, eta)

    def sample_images(self, params, rng, num, labels=None, guidance=None, use_cfg=None):
        """uint8 level images (num, H, W, C) with the configured sampler. `use_cfg` defaults to
        guidance != 1 (at 1 the unconditional half of the batch would be wasted)."""
        s = self.cfg.sample
        guidance = s.guidance if guidance is None else guidance
        labels = self.sample_labels(num) if labels is None else labels
        if use_cfg is None:
            use_cfg = self.conditional and guidance != 1.0
        x = self.sample_x(params, rng, num, s.sampler, int(s.steps) or self.num_steps, labels,
                          float(s.eta), float(guidance), use_cfg)
        return self.to_levels(x)

    def sample(self, params, rng, num):
        out = {'samples': self.sample_images(params, rng, num)}
        scales = tuple(self.cfg.sample.guidance_sweep)
        if scales:
            labels = jnp.arange(self.spec.num_classes, dtype=jnp.int32)
            sweep_rng = jax.random.fold_in(rng, 1)  # one noise for every row: only w changes
            out['sweep'] = jnp.stack([  # guidance is traced: one compiled sampler for every row
                self.sample_images(params, sweep_rng, len(labels), labels, w, use_cfg=True)
                for w in scales])
        return out

    def save_samples(self, outputs, path_stem):
        paths = [self.save_image_grid(outputs['samples'], path_stem + '.png')]
        if 'sweep' in outputs:
            sweep = outputs['sweep']
            path = self.save_image_grid(sweep.reshape((-1,) + sweep.shape[2:]),
                                        path_stem + '_guidance.png', cols=sweep.shape[1])
            images.label_rows(path, [f'w={w:g}' for w in self.cfg.sample.guidance_sweep])
            paths.append(path)
        return paths


TASK = DiffusionTask

