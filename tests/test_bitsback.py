"""Bits-back ANS with a VAE run: exact round trips, a size equal to the negative ELBO plus the
initial bits, and bad files refused."""

import itertools
import math
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from conftest import SHARED_DATA, save_trained_run
from scipy import special

from dul_jax import cli, data
from dul_jax import compress as compress_lib
from dul_jax import config as config_lib
from dul_jax.compress import bitsback
from dul_jax.compress.format import _FIXED
from dul_jax.errors import UserError
from dul_jax.train.setup import prepare

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LATENTS = 8
STEPS = 300


def _train(workdir, overrides):
    """A VAE run's workdir as `dul-jax train` leaves it (config.json, a checkpoint), trained for
    STEPS steps on one device (8 simulated devices' all-reduces can stall on a busy CPU)."""
    cfg = config_lib.load_config(os.path.join(REPO, 'experiments', 'configs',
                                              'vae_binarized_mnist.py'), overrides)
    setup = prepare(cfg, devices=jax.devices()[:1])
    # the first 3,000 training images in order, 10 epochs (the shuffling iterator takes 10 s to
    # start on a busy CPU)
    batches = [{k: v for k, v in b.items() if k != 'mask'} for b in data.eval_batches(
        cfg.data, cfg.train.batch_size, max_examples=3000, split='train')]
    save_trained_run(workdir, cfg, setup, itertools.cycle(batches), STEPS)
    return cfg


@pytest.fixture(scope='module')
def vae_run(tmp_path_factory, tfds_dir):
    """A 784-64-8 Bernoulli VAE on binarized MNIST after 300 steps, and its codec."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f'{SHARED_DATA} is absent (only the project machines have it)')
    workdir = str(tmp_path_factory.mktemp('vae_run'))
    cfg = _train(workdir, [
        f'data.tfds_dir={tfds_dir}', 'model.hidden=(64,)', f'model.latent_dim={LATENTS}',
        'mesh.data=1', f'train.steps={STEPS}', 'optim.warmup_steps=10', 'optim.lr=3e-3',
        'optim.ema_decay=0.0'])
    codec = compress_lib.load_codec(cfg, workdir)
    assert codec.kind == 'bitsback'
    return workdir, cfg, codec


@pytest.fixture(scope='module')
def test_images(vae_run):
    """The first 100 binarized-MNIST test images."""
    _, cfg, _ = vae_run
    return next(data.eval_batches(cfg.data, 100))['image'].astype(np.uint8)


def _save(path, images):
    np.save(path, images)
    return str(path)


def test_buckets_have_equal_prior_mass_and_the_posterior_every_bucket():
    edges, centres = bitsback.bucket_edges(4), bitsback.bucket_centres(4)
    np.testing.assert_allclose(np.diff(special.ndtr(edges)), 1 / 16, rtol=1e-12)
    assert edges[0] == -np.inf and edges[-1] == np.inf and (np.diff(centres) > 0).all()
    np.testing.assert_allclose(special.ndtr(centres), (np.arange(16) + 0.5) / 16, rtol=1e-12)
    freqs = bitsback.posterior_freqs(np.array([0.0, 3.0, -40.0]), np.array([0.0, -8.0, -20.0]))
    assert (freqs.sum(-1) == 2 ** compress_lib.PRECISION).all() and (freqs >= 1).all()
    # q = N(0, 1) is the prior: every bucket gets 2^24 / 2^LATENT_BITS
    np.testing.assert_array_equal(freqs[0], 2 ** (compress_lib.PRECISION - bitsback.LATENT_BITS))
    seed = bitsback.seed_words(40)
    assert len(seed) == 12 and seed[-1] >= 2 ** 31
    np.testing.assert_array_equal(seed[:3], bitsback.seed_words(8)[:3])     # fixed, not random


@pytest.mark.integration
def test_round_trip_costs_the_negative_elbo_plus_the_initial_bits(vae_run, test_images,
                                                                  tmp_path):
    _, _, codec = vae_run
    original = _save(tmp_path / 'digits.npy', test_images)
    packed, restored = str(tmp_path / 'digits.dulz'), str(tmp_path / 'restored.npy')
    stats = compress_lib.compress_file(codec, original, packed)
    compress_lib.decompress_file(codec, packed, restored)
    np.testing.assert_array_equal(np.load(restored), test_images)
    # the negative ELBO summed over the images (in bits), averaged over 200 posterior draws
    coder = codec.stepper
    log_w = jax.jit(coder.task.log_importance_weights, static_argnums=3)(
        coder.params, {'image': test_images}, jax.random.key(0), 200)
    nelbo_bits = -float(np.sum(np.mean(np.asarray(log_w), axis=1))) / math.log(2)
    initial = 32 * len(bitsback.seed_words(LATENTS))
    assert stats['initial_bits'] == initial == 128
    payload_bits = 8 * stats['payload_bytes']
    # coding with the prior instead of the posterior, or without the bits back, would cost
    # LATENT_BITS * LATENTS = 64 bits more per image: 6,400 bits here, about 25%
    assert abs(payload_bits - (nelbo_bits + initial)) < 0.03 * nelbo_bits, (payload_bits,
                                                                            nelbo_bits)
    assert abs(stats['ideal_bits'] - nelbo_bits) < 0.03 * nelbo_bits
    print(f'{payload_bits / test_images.size:.4f} bits/dim coded, negative ELBO '
          f'{nelbo_bits / test_images.size:.4f}')


@pytest.mark.integration
def test_another_process_decodes_what_the_command_line_coded(vae_run, test_images, tmp_path,
                                                             capsys):
    workdir, _, _ = vae_run
    original = _save(tmp_path / 'x.npy', test_images)
    packed, restored = str(tmp_path / 'x.dulz'), str(tmp_path / 'y.npy')
    assert cli.main(['compress', '--workdir', workdir, '--input', original,
                     '--output', packed]) == 0
    assert 'initial bits) vs' in capsys.readouterr().out
    subprocess.run([sys.executable, '-m', 'dul_jax.cli', 'decompress', '--workdir', workdir,
                    '--input', packed, '--output', restored], check=True, cwd=REPO)
    np.testing.assert_array_equal(np.load(restored), test_images)


@pytest.mark.integration
def test_wrong_truncated_and_damaged_files_are_refused(vae_run, test_images, tmp_path):
    _, _, codec = vae_run
    output = tmp_path / 'out.dulz'
    with pytest.raises(UserError, match=r'of shape \(3, 28, 27, 1\)'):
        compress_lib.compress_file(codec, _save(tmp_path / 'bad.npy',
                                                np.zeros((3, 28, 27, 1), np.uint8)), str(output))
    with pytest.raises(UserError, match='pixel value 2'):
        compress_lib.compress_file(codec, _save(tmp_path / 'bad.npy',
                                                np.full((3, 28, 28, 1), 2, np.uint8)), str(output))
    assert not output.exists()
    packed = str(tmp_path / 'packed.dulz')
    compress_lib.compress_file(codec, _save(tmp_path / 'x.npy', test_images[:10]), packed)
    with open(packed, 'rb') as f:
        blob = f.read()
    count = _FIXED.size                        # the image count: the first u64 of the shape
    restored = tmp_path / 'restored.npy'
    for name, damaged, fragment in [
            ('short', blob[:-4], 'truncated'),
            ('header', blob[:30], 'truncated'),
            ('flip', blob[:-8] + bytes([blob[-8] ^ 0x01]) + blob[-7:], 'damaged'),
            ('early', blob[:-200] + bytes([blob[-200] ^ 0x10]) + blob[-199:], 'damaged'),
            ('count', blob[:count] + b'\x01' + blob[count + 1:], 'claims'),
            ('fewer', blob[:count + 7] + b'\x09' + blob[count + 8:], 'damaged')]:
        path = tmp_path / f'{name}.dulz'
        path.write_bytes(damaged)
        with pytest.raises(UserError, match=fragment) as e:
            compress_lib.decompress_file(codec, str(path), str(restored))
        assert str(path) in str(e.value) and '\n' not in str(e.value), name
        assert not restored.exists(), name
    assert not [f for f in os.listdir(tmp_path) if f.startswith('.')]   # no temp files left
