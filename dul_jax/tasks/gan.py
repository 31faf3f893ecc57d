"""Generative adversarial networks: a generator and a discriminator trained in turn by the one
trainer (two phases, each player its own optimizer: optim.groups.generator / .discriminator).

Each step makes `model.d_steps` discriminator updates, each on its own 1/d_steps of the batch
with as many fresh samples, then one generator update with that many samples. Losses are in
losses/gan.py: non-saturating (DCGAN), hinge (SNGAN) and Wasserstein with gradient penalty
(WGAN-GP), optionally R1. Spectral normalisation of the discriminator keeps its power-iteration
vectors in the train state's model state. A class-conditional GAN feeds the class to the generator
(one-hot beside z) and uses a projection discriminator; the discriminator's fakes carry the real
batch's labels, the generator's update draws labels uniformly.

Images are mapped to [-1, 1] (levels l -> 2 l / (L - 1) - 1) and samples rounded back to levels,
for the domain FID evaluator. On the 2-D toy sets (`data.name = 'toy:grid25'`) the `modes`
evaluator counts the modes the samples cover.
"""

import jax
import jax.numpy as jnp
import numpy as np

from dul_jax import images
from dul_jax.config import check
from dul_jax.data import toy
from dul_jax.losses import gan as gan_losses
from dul_jax.model_configs import gan as default_model_config  # noqa: F401 (the contract)
from dul_jax.models import gan as gan_models
from dul_jax.tasks.base import LossOut, Phase, Task, jit_method
from dul_jax.tasks.capabilities import Generates, ModelState, SampleImages, SamplePoints

ARCHS = ('conv', 'mlp')


class GANTask(Task, Generates, ModelState, SampleImages, SamplePoints):

    def validate(self):
        super().validate()
        m, spec = self.cfg.model, self.spec
        check(m.arch in ARCHS, f'model.arch must be "conv" or "mlp", got "{m.arch}".')
        check(m.loss in gan_losses.LOSSES, f'model.loss must be one of '
              f'{", ".join(gan_losses.LOSSES)}, got "{m.loss}".')
        if m.arch == 'conv':
            self.require_images()
            h, w, _ = spec.shape
            check(h % 4 == 0 and w % 4 == 0, f'model.arch="conv" upsamples by 4, but the images '
                  f'of "{spec.name}" are {h}x{w}; use images whose sides are multiples of 4.')
        else:
            check(spec.is_points, f'model.arch="mlp" generates points, but "{spec.name}" '
                  f'is {spec.kind}; set --config.data.name to a toy set such as toy:grid25, or '
                  '--config.model.arch=conv for images.')
        check(m.d_steps >= 1 and m.z_dim >= 1 and m.pack >= 1, f'model.d_steps, model.z_dim '
              f'and model.pack must be >= 1, got {m.d_steps}, {m.z_dim} and {m.pack}.')
        check(m.pack == 1 or not self.conditional, 'model.pack > 1 packs examples of different '
              'classes together, which a projection discriminator cannot judge; set '
              '--config.model.pack=1 or --config.model.class_conditional=False.')
        check(m.gradient_penalty >= 0 and m.r1 >= 0, 'model.gradient_penalty and model.r1 must '
              f'be >= 0, got {m.gradient_penalty} and {m.r1}.')
        check(m.loss != 'wasserstein' or m.gradient_penalty > 0 or m.spectral_norm,
              'model.loss="wasserstein" needs a Lipschitz critic; set '
              '--config.model.gradient_penalty=10 (WGAN-GP) or model.spectral_norm=True.')

    def build_models(self):
        """The two players, named after their param groups (and `phases`)."""
        m, classes = self.cfg.model, self.spec.num_classes if self.conditional else 0
        if m.arch == 'conv':
            return {'generator': gan_models.ConvGenerator(tuple(self.spec.shape), m.g_channels,
                                                          classes, self.dtype),
                    'discriminator': gan_models.ConvDiscriminator(m.d_channels, classes,
                                                                  m.spectral_norm, self.dtype)}
        return {'generator': gan_models.MLPGenerator(self.spec.shape[0], m.width, m.depth,
                                                     classes, self.dtype),
                'discriminator': gan_models.MLPDiscriminator(m.width, m.depth, classes,
                                                             m.spectral_norm, self.dtype)}

    def phases(self):
        m = self.cfg.model   # whole packs per discriminator update: then B / d_steps fakes pack too
        return (Phase('discriminator', m.d_steps, m.pack), Phase('generator'))

    def ema_groups(self):
        """Only the generator is averaged (it alone samples); the discriminator trains on."""
        return ('generator',)

    def example_size(self):
        return int(np.prod(self.spec.shape))

    # ---- data and players ------------------------------------------------------------------

    def _real(self, batch):
        """The batch's examples as the players see them: images in [-1, 1], or points."""
        if self.spec.is_points:
            return batch['point'].astype(jnp.float32)
        return batch['image'].astype(jnp.float32) * (2.0 / (self.spec.num_levels - 1)) - 1.0

    def _random_labels(self, rng, num):
        if not self.conditional:
            return None
        return jax.random.randint(rng, (num,), 0, self.spec.num_classes)

    def generate(self, params, rng, num, labels=None):
        """`num` generator outputs (images in [-1, 1], or points) for z ~ N(0, I)."""
        z = jax.random.normal(rng, (num, self.cfg.model.z_dim))
        return self.models['generator'].apply({'params': params['generator']}, z, labels)

    def _pack(self, x):
        """PacGAN (Lin et al. 2018): examples i*m .. i*m+m-1 side by side on the last axis
        (a point's coordinates, an image's channels), so the discriminator sees B/m packs."""
        m = self.cfg.model.pack
        if m == 1:
            return x
        x = x.reshape((x.shape[0] // m, m) + x.shape[1:])
        return jnp.moveaxis(x, 1, -2).reshape(x.shape[:1] + x.shape[2:-1] + (-1,))

    def _discriminate(self, params, model_state, x, labels, update=False):
        """(logits, new model state) of packed examples `x` (see _pack); the spectral norm's
        vectors advance only with `update`."""
        discriminator, variables = self.models['discriminator'], {'params': params['discriminator']}
        if not self.cfg.model.spectral_norm:
            return discriminator.apply(variables, x, labels), model_state
        variables[gan_models.SPECTRAL] = model_state
        if not update:
            return discriminator.apply(variables, x, labels), model_state
        logits, updated = discriminator.apply(variables, x, labels, update=True,
                                              mutable=[gan_models.SPECTRAL])
        return logits, updated[gan_models.SPECTRAL]

    def init(self, rng, batch):
        g_rng, d_rng = jax.random.split(rng)
        x, labels = self._real(batch), self.labels(batch)
        z = jnp.zeros((x.shape[0], self.cfg.model.z_dim))
        return {'generator': self.models['generator'].init(g_rng, z, labels)['params'],
                'discriminator': self._init_discriminator(d_rng, x, labels)['params']}

    def _init_discriminator(self, rng, x, labels):
        x = jnp.concatenate([x] * self.cfg.model.pack)   # a batch of one still makes a pack
        return self.models['discriminator'].init(jax.random.fold_in(rng, 1), self._pack(x), labels)

    def init_model_state(self, rng, batch):
        """The discriminator's spectral-norm vectors u ({} without spectral norm)."""
        _, d_rng = jax.random.split(rng)
        variables = self._init_discriminator(d_rng, self._real(batch), self.labels(batch))
        return variables.get(gan_models.SPECTRAL, {})

    # ---- the two phases --------------------------------------------------------------------

    def loss(self, params, batch, rng, ctx):
        if ctx.phase == 'discriminator':
            return self._discriminator_loss(params, batch, rng, ctx.model_state)
        return self._generator_loss(params, batch, rng, ctx.model_state)

    def _discriminator_loss(self, params, batch, rng, model_state):
        m = self.cfg.model
        real, labels = self._real(batch), self.labels(batch)
        num = real.shape[0]
        z_rng, gp_rng = jax.random.split(rng)
        fake = jax.lax.stop_gradient(self.generate(params, z_rng, num, labels))
        both_labels = None if labels is None else jnp.concatenate([labels, labels])
        real, fake = self._pack(real), self._pack(fake)   # the penalties see packs too
        logits, model_state = self._discriminate(params, model_state,
                                                 jnp.concatenate([real, fake]), both_labels,
                                                 update=True)
        d_real, d_fake = logits[:len(real)], logits[len(real):]
        loss = gan_losses.discriminator_loss(m.loss, d_real, d_fake)
        metrics = {'d_real': jnp.mean(d_real), 'd_fake': jnp.mean(d_fake)}

        def critic(x):   # the penalties see the updated spectral norm, as the logits did
            return self._discriminate(params, model_state, x, labels)[0]
        if m.gradient_penalty:
            metrics['gradient_penalty'] = gan_losses.gradient_penalty(critic, real, fake, gp_rng)
            loss += m.gradient_penalty * metrics['gradient_penalty']
        if m.r1:
            metrics['r1'] = gan_losses.r1_penalty(critic, real)
            loss += 0.5 * m.r1 * metrics['r1']
        return LossOut(loss, dict(metrics, loss=loss), model_state)

    def _generator_loss(self, params, batch, rng, model_state):
        # as many samples as one discriminator update sees, whatever the batch holds
        num = self._real(batch).shape[0] // self.cfg.model.d_steps
        z_rng, y_rng = jax.random.split(rng)
        labels = self._random_labels(y_rng, num)
        fake = self.generate(params, z_rng, num, labels)
        logits, _ = self._discriminate(params, model_state, self._pack(fake), labels)
        loss = gan_losses.generator_loss(self.cfg.model.loss, logits)
        return LossOut(loss, {'loss': loss, 'd_fake': jnp.mean(logits)}, model_state)

    def eval_metrics(self, params, batch, rng):
        """None: a GAN has no test-set likelihood; the evaluators (fid, modes) judge it."""
        return {}

    # ---- samples ---------------------------------------------------------------------------

    def to_levels(self, x):
        top = self.spec.num_levels - 1
        return jnp.clip(jnp.round((x + 1.0) * (top / 2.0)), 0, top).astype(jnp.uint8)

    @jit_method('num')
    def sample_images(self, params, rng, num):
        """(num, H, W, C) levels in one generator pass; classes 0, 1, ... if conditional."""
        return self.to_levels(self.generate(params, rng, num, self.sample_labels(num)))

    @jit_method('num')
    def sample_points(self, params, rng, num):
        """(num, D) generated points (the toy sets), for the `modes` evaluator."""
        return self.generate(params, rng, num, self.sample_labels(num))

    def sample(self, params, rng, num):
        if self.spec.is_points:
            return {'samples': self.sample_points(params, rng, num)}
        return {'samples': self.sample_images(params, rng, num)}

    def save_samples(self, outputs, path_stem):
        if not self.spec.is_points:
            return [self.save_image_grid(outputs['samples'], path_stem + '.png')]
        points, name = np.asarray(outputs['samples']), self.spec.name
        mix, coverage = toy.mixture(name), toy.mode_coverage(points, name)
        title = (f'{name}: {coverage["modes"]}/{len(mix.means)} modes, '
                 f'{coverage["high_quality"]:.1%} high quality')
        return [images.save_points(points, toy.split_arrays(name, 'test')[0][:len(points)],
                                   mix.means, 3 * mix.std, title, path_stem + '.png')]


TASK = GANTask
