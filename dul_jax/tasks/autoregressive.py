"""Autoregressive Transformer task: GPT on text, iGPT on images in raster order.

Every data set becomes a sequence of discrete tokens: text windows as they are, images flattened
in raster order (row, column, channel), one token per channel value. The model predicts each token
from the ones before it, from a start token; the loss is the mean NLL per token in nats.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np

from dul_jax import storage
from dul_jax.accounting import count_params, transformer_flops_per_token
from dul_jax.config import check
from dul_jax.data import decode_text, encode_text
from dul_jax.errors import UserError
from dul_jax.losses.likelihood import bits_per_dim
from dul_jax.model_configs import autoregressive as default_model_config  # noqa: F401 (the contract)
from dul_jax.models.gpt import GPT, shift_right
from dul_jax.ops.cross_entropy import categorical_nll
from dul_jax.sampling import sample_logits
from dul_jax.tasks.base import LossOut, Task, jit_method
from dul_jax.tasks.capabilities import Generates


class AutoregressiveTask(Task, Generates):
    width_keys = ('embed_dim', 'mlp_dim', 'num_heads')

    embedding_names = ('tok_embed', 'pos_embed', 'class_embed')

    def __init__(self, cfg, spec):
        self.length = int(np.prod(spec.shape))
        super().__init__(cfg, spec)

    def build_model(self):
        m = self.cfg.model
        return GPT(
            vocab_size=self.spec.num_levels, max_len=self.length, num_layers=m.num_layers,
            num_heads=m.num_heads, embed_dim=m.embed_dim, mlp_dim=m.mlp_dim,
            num_classes=self.spec.num_classes if self.conditional else 0, dropout=m.dropout,
            dtype=self.dtype, remat=m.remat, scan_unroll=m.scan_unroll, kernels=self.kernels)

    def validate(self):
        super().validate()
        m = self.cfg.model
        check(m.embed_dim % m.num_heads == 0,
              f'model.embed_dim={m.embed_dim} must be a multiple of model.num_heads={m.num_heads}.')
        self.prompt_tokens()   # a prompt it cannot take is said before anything compiles

    @property
    def takes_prompt(self):
        return self.spec.is_text

    def prompt_tokens(self) -> np.ndarray:
        """sample.prompt as token ids under the data's vocabulary ((0,) without one)."""
        prompt = self.cfg.sample.get('prompt', '')
        if not prompt or not self.spec.is_text:
            return np.zeros((0,), np.int32)
        unknown = sorted(set(prompt) - set(self.spec.vocab)) if self.spec.vocab else []
        check(not unknown, f'sample.prompt has characters the model never saw ({unknown[:5]}); '
              f'its vocabulary is the {len(self.spec.vocab)} characters of its training text.')
        tokens = encode_text(prompt, self.spec)
        check(len(tokens) < self.length, f'sample.prompt is {len(tokens)} tokens, but the model '
              f'sees {self.length}; give a shorter prompt.')
        return tokens

    def example_size(self):
        return self.length

    def flops_per_example(self, params):
        m = self.cfg.model
        matmul = count_params(params) - count_params(params, self.embedding_names)
        return self.length * transformer_flops_per_token(matmul, m.num_layers, self.length,
                                                         m.embed_dim)

    def _tokens(self, batch):
        if self.spec.is_image:
            return batch['image'].reshape(batch['image'].shape[0], -1).astype(jnp.int32)
        return batch['tokens'].astype(jnp.int32)

    def _nll(self, params, batch, rng=None):
        """Per-token NLL in nats, shape (batch, length)."""
        tokens = self._tokens(batch)
        kwargs = {'rngs': {'dropout': rng}, 'deterministic': False} if rng is not None else {}
        logits = self.model.apply({'params': params}, shift_right(tokens, self.model.bos),
                                  self.labels(batch), **kwargs)
        return categorical_nll(logits, tokens, impl=self.kernels.cross_entropy)

    def init(self, rng, batch):
        tokens = self._tokens(batch)
        return self.model.init(rng, shift_right(tokens, self.model.bos),
                               self.labels(batch))['params']

    def loss(self, params, batch, rng, ctx):
        nll = self._nll(params, batch, rng if self.cfg.model.dropout > 0 else None)
        loss = nll.mean()
        return LossOut(loss, {'loss': loss, 'bits_per_dim': bits_per_dim(loss, 1)})

    def eval_metrics(self, params, batch, rng):
        nll = self._nll(params, batch).sum(axis=-1)  # nats per example
        metrics = {'loss': nll / self.length, 'bits_per_dim': bits_per_dim(nll, self.length)}
        if self.spec.is_image:
            metrics['nats_per_image'] = nll
        return metrics

    # ---- sampling -------------------------------------------------------------------------

    @jit_method('num')
    def _sample_tokens(self, params, rng, num, labels, forced):
        decoder = self.model.clone(decode=True)
        dummy = jnp.zeros((num, self.length), jnp.int32)
        cache_shapes = jax.eval_shape(lambda: decoder.init(jax.random.key(0), dummy, labels))
        cache = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), cache_shapes['cache'])
        temperature, top_k = self.cfg.sample.temperature, self.cfg.sample.top_k

        def step(carry, given):   # given: the prompt's token at this position, or -1
            cache, token, rng = carry
            logits, updated = decoder.apply({'params': params, 'cache': cache}, token[:, None],
                                            labels, mutable=['cache'])
            rng, sub = jax.random.split(rng)
            token = sample_logits(sub, logits[:, 0], temperature, top_k).astype(jnp.int32)
            token = jnp.where(given >= 0, given, token)
            return (updated['cache'], token, rng), token

        start = jnp.full((num,), self.model.bos, jnp.int32)
        given = jnp.full((self.length, num), -1, jnp.int32)
        given = given.at[:forced.shape[0]].set(forced[:, None])
        _, tokens = jax.lax.scan(step, (cache, start, rng), given)
        return tokens.T

    def sample(self, params, rng, num):
        tokens = self._sample_tokens(params, rng, num, self.sample_labels(num),
                                     jnp.asarray(self.prompt_tokens()))
        return {'samples': tokens.reshape((num,) + tuple(self.spec.shape))}

    def position_decoder(self, params):
        if self.conditional:
            raise UserError('a class-conditional model would need the labels to code with; use '
                            'an unconditional run.')
        if self.spec.is_text and self.spec.vocab is not None:
            raise UserError('this run models characters, but files are coded as bytes; use a '
                            'run trained with --config.data.text_vocab=bytes.')
        return CachedDecoder(self, params)

    def save_samples(self, outputs, path_stem):
        if self.spec.is_image:
            return [self.save_image_grid(outputs['samples'], path_stem + '.png')]
        text = ''.join(f'===== sample {i} =====\n{decode_text(tokens, self.spec)}\n'
                       for i, tokens in enumerate(outputs['samples']))
        return [os.fspath(storage.write_atomic(path_stem + '.txt', text))]


class CachedDecoder:
    """The GPT in decode mode, one token per call, keys and values kept in its cache: the
    PositionDecoder that `dul-jax compress` codes with."""
    rows = 64  # text windows side by side; changing it changes the logits' last bits

    def __init__(self, task: AutoregressiveTask, params):
        self.model = task.model.clone(decode=True)
        self.length, self.params = task.length, jax.device_put(params)
        self._step = jax.jit(lambda p, cache, tokens: self.model.apply(
            {'params': p, 'cache': cache}, tokens[:, None], None, mutable=['cache']))

    def start(self, rows):
        dummy = jnp.zeros((rows, self.length), jnp.int32)
        shapes = jax.eval_shape(lambda: self.model.init(jax.random.key(0), dummy, None))
        cache = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes['cache'])
        return cache, jnp.full((rows,), self.model.bos, jnp.int32)

    def next(self, state):
        logits, updated = self._step(self.params, *state)
        return (updated['cache'], state[1]), logits[:, 0]

    def feed(self, state, symbols):
        return state[0], jnp.asarray(symbols, jnp.int32)


TASK = AutoregressiveTask
