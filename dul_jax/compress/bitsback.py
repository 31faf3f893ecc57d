"""Bits-back ANS: lossless coding of images with a latent-variable model (Townsend, Bird & Barber
2019, "Practical lossless compression with latent variables using bits back coding").

`dul-jax compress` uses it for a run whose task has a diagonal Gaussian posterior q(z|x)
(`posterior`) and a per-pixel likelihood p(x|z) (`pixel_log_probs`), e.g. task 'vae';
compress/format.py keeps the file format, checksums and atomic writes. On constriction's ANS
stack, per image:

  encode: pop z with q(z|x), push x with p(x|z), push z with the prior p(z);
  decode (images in reverse order): pop z with p(z), pop x with p(x|z), push z with q(z|x).

Each image costs -log p(x|z) - log p(z) + log q(z|x) bits net: the negative ELBO at a posterior
draw, so the file's size is the model's negative ELBO summed over the images, plus the one-time
initial bits below.

Conventions, as the BB-ANS reference code: each latent dimension is cut into 2^LATENT_BITS
buckets of equal mass under the standard normal prior (so the prior is uniform over buckets and
costs exactly LATENT_BITS bits per dimension), the decoder is fed the buckets' centres (the
prior's quantiles at the buckets' mid-masses), and the posterior's bucket probabilities are
differences of its CDF at the bucket edges. LATENT_BITS = 8, as the reference. Departure: one
frequency precision of 24 bits (rows.PRECISION) for posterior and likelihood (the reference:
14); the likelihood's frequencies are rows.quantize's (floor(p * 2^24), at least 1, the
remainder to the most probable level). Finer latents code worse here (benchmarks/README.md):
every bucket keeps at least 1/2^24 of the posterior, so a latent is now and then popped from the
far tail, which costs its image many bits.

Initial bits: the first image's pop of z needs bits on the stack before anything has been pushed.
The stack is seeded with `seed_words(latent_dim)` = ceil(latent_dim * LATENT_BITS / 32) + 2
pseudo-random 32-bit words (sha256 in counter mode, so fixed forever), a one-time overhead of
32 * that many bits per file (12 words, 384 bits, for 40 latents); after decoding the last image
the stack must hold exactly the seed again, else the file is damaged.

Determinism: encoder and decoder call the same two jitted functions on one image at a time (batch
shape (1, ...) on both sides), so their float32 outputs agree bit for bit on the same machine, and
turn them into frequencies on the host in float64. On a GPU, keep XLA's kernel choice fixed with
XLA_FLAGS=--xla_gpu_autotune_level=0 as for the autoregressive coder.
"""

import dataclasses
import functools
import hashlib
import math

import constriction
import jax
import jax.numpy as jnp
import numpy as np
from scipy import special

from dul_jax.compress.rows import PRECISION, quantize

LATENT_BITS = 8


@functools.cache
def bucket_edges(bits: int = LATENT_BITS) -> np.ndarray:
    """The 2^bits + 1 edges (from -inf to +inf) of buckets of equal standard-normal mass."""
    edges = special.ndtri(np.arange(2 ** bits + 1, dtype=np.float64) / 2 ** bits)
    edges.flags.writeable = False
    return edges


def bucket_centres(bits: int = LATENT_BITS) -> np.ndarray:
    """Each bucket's centre in mass: the standard normal's quantile at (i + 1/2) / 2^bits."""
    return special.ndtri((np.arange(2 ** bits, dtype=np.float64) + 0.5) / 2 ** bits)


def posterior_freqs(mean: np.ndarray, log_var: np.ndarray, bits: int = LATENT_BITS) -> np.ndarray:
    """(D, 2^bits) integer frequencies (as float64) of q(z|x) = N(mean, exp(log_var)) over the
    prior's buckets, summing to 2^PRECISION: differences of the CDF at the bucket edges, computed
    in float64 and rounded as round(cdf * (2^PRECISION - 2^bits)) + edge index, so every bucket
    keeps at least 1 and the posterior equal to the prior gets exactly 2^(PRECISION - bits)."""
    buckets = 2 ** bits
    mean = np.asarray(mean, np.float64)[:, None]
    std = np.exp(0.5 * np.asarray(log_var, np.float64))[:, None]
    cdf = special.ndtr((bucket_edges(bits)[None] - mean) / std)
    cdf[:, 0], cdf[:, -1] = 0.0, 1.0
    ints = np.rint(cdf * (2.0 ** PRECISION - buckets)) + np.arange(buckets + 1)
    return np.diff(ints, axis=-1)


def seed_words(latent_dim: int) -> np.ndarray:
    """The stack's initial words: fixed pseudo-random uint32s, the last one's top bit set (an ANS
    stack never ends in a zero word, and so all its 32 bits count)."""
    count = math.ceil(latent_dim * LATENT_BITS / 32) + 2
    stream = b''.join(hashlib.sha256(b'dul_jax bits-back seed %d' % i).digest()
                      for i in range(-(-count // 8)))
    words = np.frombuffer(stream, '<u4')[:count].astype(np.uint32)
    words[-1] |= np.uint32(1 << 31)
    return words


@dataclasses.dataclass
class LatentCoder:
    """A task's q(z|x) and p(x|z) with its params (host arrays), one image per call."""
    task: object
    params: object

    def __post_init__(self):
        self._posterior = jax.jit(self.task.posterior)
        self._likelihood = jax.jit(self.task.pixel_log_probs)
        self._centres = bucket_centres().astype(np.float32)
        self.levels = self.task.spec.num_levels
        image = jax.ShapeDtypeStruct((1, *self.task.spec.shape), jnp.uint8)
        self.latent_dim = jax.eval_shape(self._posterior, self.params, image)[0].shape[-1]

    def posterior(self, image: np.ndarray) -> np.ndarray:
        """(D, 2^LATENT_BITS) frequencies of q(z|x) for one (H, W, C) image."""
        mean, log_var = self._posterior(self.params, image[None])
        return posterior_freqs(np.asarray(mean)[0], np.asarray(log_var)[0])

    def likelihood(self, buckets: np.ndarray) -> np.ndarray:
        """(H*W*C, levels) frequencies of p(x|z) at the buckets' centres."""
        z = self._centres[buckets][None]
        log_probs = np.asarray(self._likelihood(self.params, z))
        return quantize(log_probs.reshape(-1, self.levels))


def _bits(freqs: np.ndarray, symbols: np.ndarray) -> float:
    return float(np.sum(PRECISION - np.log2(freqs[np.arange(len(symbols)), symbols])))


def encode(coder: LatentCoder, images: np.ndarray) -> tuple[np.ndarray, float]:
    """Code (N, H, W, C) uint8 images; returns (uint32 words, net ideal bits under the quantized
    model, without the initial bits)."""
    stack = constriction.stream.stack.AnsCoder(seed_words(coder.latent_dim))
    family = constriction.stream.model.Categorical(perfect=False)
    prior = constriction.stream.model.Uniform(2 ** LATENT_BITS)
    scale = 2.0 ** PRECISION
    ideal = 0.0
    for image in images:
        q = coder.posterior(image)
        z = stack.decode(family, q / scale)                       # bits back: pop z ~ q(z|x)
        x = image.reshape(-1).astype(np.int32)
        likelihood = coder.likelihood(z)
        stack.encode_reverse(x, family, likelihood / scale)      # push x with p(x|z)
        stack.encode_reverse(z, prior)                            # push z with p(z)
        ideal += _bits(likelihood, x) + LATENT_BITS * len(z) - _bits(q, z)
    return stack.get_compressed(), ideal


def decode(coder: LatentCoder, words: np.ndarray, count: int, shape: tuple) -> np.ndarray:
    """The inverse of encode: (count, *shape) uint8 images. ValueError where the stack does not
    end as the seed it began with (a damaged file)."""
    stack = constriction.stream.stack.AnsCoder(words)
    family = constriction.stream.model.Categorical(perfect=False)
    prior = constriction.stream.model.Uniform(2 ** LATENT_BITS)
    scale = 2.0 ** PRECISION
    out = np.zeros((count, *shape), np.uint8)
    for i in reversed(range(count)):
        z = stack.decode(prior, coder.latent_dim)                  # pop z with p(z)
        x = stack.decode(family, coder.likelihood(z) / scale)     # pop x with p(x|z)
        out[i] = x.reshape(shape)
        stack.encode_reverse(z, family, coder.posterior(out[i]) / scale)   # give the bits back
    if not np.array_equal(stack.get_compressed(), seed_words(coder.latent_dim)):
        raise ValueError('the initial bits did not come back')
    return out
