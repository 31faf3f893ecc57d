"""Representations learnt from two augmented views of each image: SimCLR (Chen et al. 2020), BYOL
(Grill et al. 2020), and a supervised encoder of the same size as the baseline.

- simclr: encoder -> projection head -> NT-Xent over the global batch (losses/contrastive.py).
- byol: the online encoder -> projector -> predictor regresses the target network's projection
  of the other view; the target (encoder and projector) is an EMA of the online network, kept in
  the train state's model state and updated after each optimizer step at BYOL's cosine rate.
- supervised: encoder -> linear classifier, cross-entropy on one augmented view.

Both views of a batch go through the networks together, so the heads' batch statistics cover
2B examples (as SimCLR's global BatchNorm; BYOL's code normalises each view on its own).
Augmentations run on device (data/augment.py, config model.augment). `features` are the frozen
encoder's, for the shared probe evaluator; eval reports the cosine between the features of two
views of each test image. It does not generate; its pictures show the augmentations: test
images above two views of each.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dul_jax.config import check
from dul_jax.data import augment
from dul_jax.losses.contrastive import byol_regression, l2_normalize, nt_xent, target_decay
from dul_jax.model_configs import contrastive as default_model_config  # noqa: F401 (the contract)
from dul_jax.models.encoders import MLPHead, ResNet, ViTEncoder, linear
from dul_jax.tasks.base import LossOut, Task, jit_method
from dul_jax.tasks.capabilities import Features, ModelState, Pictures

METHODS = ('simclr', 'byol', 'supervised')
ENCODERS = ('resnet', 'vit')
TARGET_PARTS = ('encoder', 'projector')  # the parts of the online network BYOL's target copies


class ContrastiveTask(Task, Features, ModelState, Pictures):

    @property
    def couples_batch(self):
        return self.cfg.model.method != 'supervised'  # negatives and the heads' batch statistics

    def validate(self):
        super().validate()
        self.require_images()
        m, spec = self.cfg.model, self.spec
        check(m.method in METHODS, f'model.method must be one of {", ".join(METHODS)}, got '
              f'"{m.method}".')
        check(m.encoder in ENCODERS, f'model.encoder must be one of {", ".join(ENCODERS)}, got '
              f'"{m.encoder}".')
        if m.encoder == 'resnet':
            check(m.width > 0 and m.stem_stride in (1, 2) and len(m.blocks) > 0 and
                  min(m.blocks) >= 1, f'model.width must be positive, model.stem_stride 1 or 2 '
                  f'and model.blocks a non-empty tuple of counts >= 1, got {m.width}, '
                  f'{m.stem_stride} and {tuple(m.blocks)}.')
        else:
            h, w, _ = spec.shape
            check(m.patch_size > 0 and h % m.patch_size == 0 and w % m.patch_size == 0,
                  f'model.patch_size={m.patch_size} does not tile the {h}x{w} images of '
                  f'"{spec.name}"; set --config.model.patch_size to a divisor of {math.gcd(h, w)}.')
            check(m.embed_dim % m.num_heads == 0 and m.embed_dim % 4 == 0,
                  f'model.embed_dim={m.embed_dim} must be a multiple of 4 (2-D sine-cosine '
                  f'positions) and of model.num_heads={m.num_heads}; change it.')
        check(m.head_hidden > 0 and m.head_dim > 0, 'model.head_hidden and model.head_dim must '
              f'be positive, got {m.head_hidden} and {m.head_dim}.')
        check(m.temperature > 0, f'model.temperature must be positive, got {m.temperature}.')
        check(0.0 <= m.target_decay < 1.0,
              f'model.target_decay must be in [0, 1), got {m.target_decay}.')
        check(m.method != 'supervised' or spec.num_classes > 0, f'model.method="supervised" '
              f'needs labels, but "{spec.name}" has none; choose simclr or byol.')
        check(m.method == 'supervised' or self.cfg.train.batch_size >= 2,
              f'model.method="{m.method}" contrasts the examples of a batch; set '
              '--config.train.batch_size to 2 or more.')
        augment.validate(m.augment, tuple(spec.shape))

    def build_models(self):
        """The encoder and the method's heads, named after their param groups."""
        m = self.cfg.model
        if m.encoder == 'resnet':
            encoder = ResNet(m.width, tuple(m.blocks), m.stem_stride, self.dtype)
        else:
            encoder = ViTEncoder(tuple(self.spec.shape), m.patch_size, m.embed_dim, m.num_layers,
                                 m.num_heads, m.mlp_dim, self.dtype, m.remat, m.scan_unroll,
                                 self.kernels)
        if m.method == 'supervised':
            return {'encoder': encoder,
                    'classifier': linear(max(self.spec.num_classes, 1), self.dtype)}
        heads = {'projector': MLPHead(m.head_hidden, m.head_dim, self.dtype)}
        if m.method == 'byol':
            heads['predictor'] = MLPHead(m.head_hidden, m.head_dim, self.dtype)
        return {'encoder': encoder, **heads}

    def example_size(self):
        return int(np.prod(self.spec.shape[:2]))  # pixels per example

    # ---- networks --------------------------------------------------------------------------

    def _pixels(self, levels):
        return levels.astype(jnp.float32) / max(self.spec.num_levels - 1, 1)

    def _apply(self, name, params, *args):
        """The module `name` on its own param group."""
        return self.models[name].apply({'params': params[name]}, *args)

    def _heads(self):
        return {name: module for name, module in self.models.items() if name != 'encoder'}

    def init(self, rng, batch):
        x = self._pixels(batch['image'])
        keys = dict(zip(['encoder', 'projector', 'predictor', 'classifier'],
                        jax.random.split(rng, 4)))
        params = {'encoder': self.models['encoder'].init(keys['encoder'], x)['params']}
        h = jnp.zeros((x.shape[0], self._apply('encoder', params, x).shape[-1]))
        for name, head in self._heads().items():
            inputs = h if name != 'predictor' else jnp.zeros((x.shape[0], self.cfg.model.head_dim))
            params[name] = head.init(keys[name], inputs)['params']
        return params

    def init_model_state(self, rng, batch):
        """BYOL's target network: a copy of the online encoder and projector at init ({} for
        the other methods). `rng` is init's, so the copy is exact."""
        if self.cfg.model.method != 'byol':
            return {}
        params = self.init(rng, batch)
        return {name: params[name] for name in TARGET_PARTS}

    def after_update(self, params, model_state, step):
        """The target moves towards the updated online network: t <- tau t + (1 - tau) online."""
        if self.cfg.model.method != 'byol':
            return model_state
        tau = target_decay(step, self.cfg.train.steps, self.cfg.model.target_decay)
        return jax.tree.map(lambda t, o: tau * t + (1.0 - tau) * o, model_state,
                            {name: params[name] for name in TARGET_PARTS})

    def _project(self, params, views):
        return self._apply('projector', params, self._apply('encoder', params, views))

    # ---- losses ----------------------------------------------------------------------------

    def loss(self, params, batch, rng, ctx):
        m, x, model_state = self.cfg.model, self._pixels(batch['image']), ctx.model_state
        if m.method == 'supervised':
            h = self._apply('encoder', params, augment.augment(x, rng, m.augment))
            logits = self._apply('classifier', params, h)
            labels = batch['label'].astype(jnp.int32)
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
            accuracy = jnp.mean(jnp.argmax(logits, -1) == labels)
            return LossOut(loss, {'loss': loss, 'accuracy': accuracy}, model_state)
        n = x.shape[0]
        views = jnp.concatenate(augment.two_views(x, rng, m.augment))   # view 1, then view 2
        z = self._project(params, views)
        if m.method == 'simclr':
            loss = nt_xent(z[:n], z[n:], m.temperature).mean()
            return LossOut(loss, {'loss': loss, 'positive_accuracy': _positive_accuracy(z)},
                           model_state)
        prediction = self._apply('predictor', params, z)
        target = self._project(jax.lax.stop_gradient(model_state), views)
        per_example = byol_regression(prediction[:n], target[n:]) + \
            byol_regression(prediction[n:], target[:n])
        loss = per_example.mean()
        return LossOut(loss, {'loss': loss}, model_state)

    def eval_metrics(self, params, batch, rng):
        """Per test image: the cosine between the features of two of its views (1 = invariant;
        high even at init, since the features are means of ReLUs, so compare runs, not 0), and
        for the supervised encoder its loss and accuracy on the image itself."""
        x = self._pixels(batch['image'])
        views = augment.two_views(x, rng, self.cfg.model.augment)
        h1, h2 = (self._apply('encoder', params, v) for v in views)
        metrics = {'view_cosine': jnp.sum(l2_normalize(h1) * l2_normalize(h2), axis=-1)}
        if self.cfg.model.method == 'supervised':
            logits = self._apply('classifier', params, self.features(params, batch['image']))
            labels = batch['label'].astype(jnp.int32)
            metrics['loss'] = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
            metrics['accuracy'] = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
        return metrics

    def features(self, params, levels):
        """The frozen encoder's (B, D) features of unaugmented images."""
        return self._apply('encoder', params, self._pixels(levels))

    # ---- pictures --------------------------------------------------------------------------

    @jit_method()
    def _views(self, levels, rng):
        x = self._pixels(levels)
        return jnp.stack([x, *augment.two_views(x, rng, self.cfg.model.augment)])

    def pictures(self, params, rng, examples):
        """In [0, 1]: the examples ('originals') and two augmented views of each ('views',
        (2, num, H, W, C))."""
        stacked = self._views(jnp.asarray(examples['image']), rng)
        return {'originals': stacked[0], 'views': stacked[1:]}

    def save_samples(self, outputs, path_stem):
        parts = [outputs['originals'], *outputs['views']]
        return [self.save_rows_grid([np.asarray(p) for p in parts], path_stem + '.png')]


def _positive_accuracy(z):
    """How often an anchor's most similar other embedding is its other view (a diagnostic)."""
    n = z.shape[0] // 2
    z = l2_normalize(z)
    sims = jnp.where(jnp.eye(2 * n, dtype=bool), -jnp.inf, z @ z.T)
    return jnp.mean(jnp.argmax(sims, -1) == jnp.concatenate([jnp.arange(n, 2 * n),
                                                             jnp.arange(n)]))


TASK = ContrastiveTask
