"""Bits-back ANS with a VAE run: coded size against the negative ELBO, compress and decompress
timed in separate processes.

  python benchmarks/bitsback_vae.py --workdir RUN [--num 1000] [--out DIR] [--draws 100]

Saves the first --num images of the run's eval split to DIR/test{num}.npy, prints their negative
ELBO in bits/dim (the mean of -log p(x,z) + log q(z|x) over --draws posterior draws per image, with
the EMA params `dul-jax compress` codes with), then runs `dul-jax compress` and `dul-jax
decompress` (python -m dul_jax.cli, each in a fresh process) and checks the round trip. Reads
the run's workdir only.
"""

import argparse
import math
import os
import subprocess
import sys
import time

import jax
import numpy as np

from dul_jax import compress, data
from dul_jax.compress import bitsback
from dul_jax.train import loop


def negative_elbo_bits(codec, images: np.ndarray, draws: int, batch: int = 500) -> float:
    task, params = codec.stepper.task, codec.stepper.params
    weights = jax.jit(task.log_importance_weights, static_argnums=3)
    nats = 0.0
    for start in range(0, len(images), batch):
        log_w = weights(params, {'image': images[start:start + batch]}, jax.random.key(start),
                        draws)
        nats -= float(np.asarray(log_w, np.float64).mean(axis=1).sum())
    return nats / math.log(2)


def cli(*args: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, '-m', 'dul_jax.cli', *args], check=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--workdir', required=True)
    parser.add_argument('--num', type=int, default=1000, help='images to code')
    parser.add_argument('--out', default='.', help='folder for the .npy and .dulz files')
    parser.add_argument('--draws', type=int, default=100, help='posterior draws per image')
    parser.add_argument('--config', action='append', default=[],
                        help='config overrides for reading the data, e.g. data.tfds_dir=...')
    args = parser.parse_args()
    cfg = loop.load_config_of(args.workdir, args.config)
    batches = data.eval_batches(cfg.data, min(args.num, 1000), max_examples=args.num)
    images = np.concatenate([b['image'][b['mask'] > 0] for b in batches]).astype(np.uint8)
    original = os.path.join(args.out, f'test{args.num}.npy')
    packed = os.path.join(args.out, f'test{args.num}.dulz')
    restored = os.path.join(args.out, f'restored{args.num}.npy')
    np.save(original, images)
    dims = images.size
    encode = cli('compress', '--workdir', args.workdir, '--input', original, '--output', packed)
    # the checkpoint the file was coded with, even if the run has saved a newer one since
    codec = compress.load_codec(cfg, args.workdir, step=compress.checkpoint_step(packed))
    nelbo = negative_elbo_bits(codec, images, args.draws)
    if os.path.exists(restored):
        os.remove(restored)
    decode = cli('decompress', '--workdir', args.workdir, '--input', packed, '--output',
                 restored)
    assert np.array_equal(np.load(restored), images), 'the round trip is not exact'
    size = os.path.getsize(packed)
    initial = 32 * len(bitsback.seed_words(codec.stepper.latent_dim))
    print(f'{len(images):,} images of {cfg.data.name}, checkpoint step {codec.step}: '
          f'{os.path.getsize(original):,} -> {size:,} bytes ({size / len(images):.2f} '
          f'bytes/image), {8 * size / dims:.4f} bits/dim coded (file, incl. header and '
          f'{initial} initial bits) vs negative ELBO {nelbo / dims:.4f} bits/dim '
          f'({nelbo * math.log(2) / len(images):.2f} nats/image, {args.draws} draws); '
          f'compress {encode:.1f} s, decompress {decode:.1f} s (whole processes), decoded '
          'exactly')


if __name__ == '__main__':
    main()
