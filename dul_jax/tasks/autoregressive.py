"""Autoregressive Transformer task: GPT on text, iGPT on images in raster order.

Every data set becomes a sequence of discrete tokens: text windows as they are, images flattened
in raster order (row, column, channel), one token per channel value. The model predicts each token
from the ones before it, from a start token; the loss is the mean NLL per token in nats.
"""

import functools
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from dul_jax import images
from dul_jax.config import check
from dul_jax.data import decode_text
from dul_jax.losses.likelihood import bits_per_dim
from dul_jax.models.gpt import GPT, shift_right
from dul_jax.ops.cross_entropy import categorical_nll
from dul_jax.sampling import sample_logits
from dul_jax.scaling.accounting import (
    count_embedding_params,
    count_params,
    transformer_flops_per_token,
)
from dul_jax.sharding.mesh import to_host
from dul_jax.tasks.base import Task, register

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


def default_model_config() -> ml_collections.ConfigDict:
    m = ml_collections.ConfigDict()
    m.num_layers = 4
    m.num_heads = 4
    m.embed_dim = 128
    m.mlp_dim = 512
    m.dropout = 0.0
    m.dtype = 'float32'          # compute dtype; params stay float32
    m.remat = 'none'             # 'none', 'full' or 'dots'
    # Layers per step of the scan over layers; 0 = all of them, a plain unrolled stack: the fastest
    # step on CPU (+20% for 4 layers) and GPU (+28% for GPT-125M), at a compile time that grows
    # with depth (12 layers: 5.3 s against 3.1 s on the 2-core CPU). 1 = a rolled scan.
    m.scan_unroll = 0
    m.class_conditional = False  # condition on the data set's labels (images)
    return m


@register('autoregressive')
class AutoregressiveTask(Task):

    def __init__(self, cfg, spec):
        super().__init__(cfg, spec)
        m = cfg.model
        self.length = int(np.prod(spec.shape))
        self.conditional = bool(m.class_conditional)
        self.model = GPT(
            vocab_size=spec.num_levels, max_len=self.length, num_layers=m.num_layers,
            num_heads=m.num_heads, embed_dim=m.embed_dim, mlp_dim=m.mlp_dim,
            num_classes=spec.num_classes if self.conditional else 0, dropout=m.dropout,
            dtype=DTYPES.get(m.dtype, jnp.float32), remat=m.remat,
            scan_unroll=m.get('scan_unroll', 0))

    def validate(self):
        m = self.cfg.model
        check(m.embed_dim % m.num_heads == 0,
              f'model.embed_dim={m.embed_dim} must be a multiple of model.num_heads={m.num_heads}.')
        check(m.dtype in DTYPES, f'model.dtype must be one of {sorted(DTYPES)}, got "{m.dtype}".')
        check(m.get('scan_unroll', 0) >= 0,
              f'model.scan_unroll must be 0 (all layers) or positive, got {m.get("scan_unroll")}.')
        check(m.remat in ('none', 'full', 'dots'),
              f'model.remat must be "none", "full" or "dots", got "{m.remat}".')
        check(not self.conditional or self.spec.num_classes > 0,
              f'model.class_conditional needs labels, but data set "{self.spec.name}" has none; '
              'set --config.model.class_conditional=False.')

    def example_size(self):
        return self.length

    def flops_per_example(self, params):
        m = self.cfg.model
        matmul = count_params(params) - count_embedding_params(params)
        return self.length * transformer_flops_per_token(matmul, m.num_layers, self.length,
                                                         m.embed_dim)

    def _tokens(self, batch):
        if self.spec.kind == 'image':
            return batch['image'].reshape(batch['image'].shape[0], -1).astype(jnp.int32)
        return batch['tokens'].astype(jnp.int32)

    def _labels(self, batch):
        return batch['label'].astype(jnp.int32) if self.conditional else None

    def _nll(self, params, batch, rng=None):
        """Per-token NLL in nats, shape (batch, length)."""
        tokens = self._tokens(batch)
        kwargs = {'rngs': {'dropout': rng}, 'deterministic': False} if rng is not None else {}
        logits = self.model.apply({'params': params}, shift_right(tokens, self.model.bos),
                                  self._labels(batch), **kwargs)
        return categorical_nll(logits, tokens)

    def init(self, rng, batch):
        tokens = self._tokens(batch)
        return self.model.init(rng, shift_right(tokens, self.model.bos),
                               self._labels(batch))['params']

    def loss(self, params, batch, rng):
        nll = self._nll(params, batch, rng if self.cfg.model.dropout > 0 else None)
        loss = nll.mean()
        return loss, {'loss': loss, 'bits_per_dim': bits_per_dim(loss, 1)}

    def eval_metrics(self, params, batch):
        nll = self._nll(params, batch).sum(axis=-1)  # nats per example
        metrics = {'loss': nll / self.length, 'bits_per_dim': bits_per_dim(nll, self.length)}
        if self.spec.kind == 'image':
            metrics['nats_per_image'] = nll
        return metrics

    # ---- sampling -------------------------------------------------------------------------

    def sample_labels(self, num):
        return jnp.arange(num, dtype=jnp.int32) % self.spec.num_classes if self.conditional else None

    @functools.partial(jax.jit, static_argnums=(0, 3))
    def _sample_tokens(self, params, rng, num, labels):
        decoder = self.model.clone(decode=True)
        dummy = jnp.zeros((num, self.length), jnp.int32)
        cache_shapes = jax.eval_shape(lambda: decoder.init(jax.random.key(0), dummy, labels))
        cache = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), cache_shapes['cache'])
        temperature, top_k = self.cfg.sample.temperature, self.cfg.sample.top_k

        def step(carry, _):
            cache, token, rng = carry
            logits, updated = decoder.apply({'params': params, 'cache': cache}, token[:, None],
                                            labels, mutable=['cache'])
            rng, sub = jax.random.split(rng)
            token = sample_logits(sub, logits[:, 0], temperature, top_k).astype(jnp.int32)
            return (updated['cache'], token, rng), token

        start = jnp.full((num,), self.model.bos, jnp.int32)
        _, tokens = jax.lax.scan(step, (cache, start, rng), None, length=self.length)
        return tokens.T

    def sample(self, params, rng, num):
        tokens = to_host(self._sample_tokens(params, rng, num, self.sample_labels(num)))
        return tokens.reshape((num,) + tuple(self.spec.shape))

    def save_samples(self, samples, path_stem):
        os.makedirs(os.path.dirname(path_stem) or '.', exist_ok=True)
        if self.spec.kind == 'image':
            cols = self.spec.num_classes if self.conditional else None
            return [images.save_grid(samples, path_stem + '.png', self.spec.num_levels, cols=cols,
                                     scale=max(1, 64 // self.spec.shape[0]))]
        path = path_stem + '.txt'
        with open(path, 'w', encoding='utf-8') as f:
            f.writelines(f'===== sample {i} =====\n{decode_text(tokens, self.spec)}\n' for i, tokens in enumerate(samples))
        return [path]
