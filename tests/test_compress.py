"""Lossless compression: exact round trips, size close to the model's NLL, and bad input refused."""

import math
import os
import shutil
import subprocess
import sys
import types

import flax.linen as nn
import jax
import numpy as np
import pytest
from conftest import save_trained_run

from dul_jax import cli, data
from dul_jax import compress as compress_lib
from dul_jax import config as config_lib
from dul_jax.compress.command import Codec
from dul_jax.compress.format import _FIXED, _TAIL
from dul_jax.data import DataSpec
from dul_jax.errors import UserError
from dul_jax.tasks import make_task
from dul_jax.train.checkpoint import Checkpointer, restore_state
from dul_jax.train.setup import prepare

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO, 'experiments', 'configs')


def _run(workdir, config, overrides, steps):
    """A run's workdir as `dul-jax train` leaves it (config.json, a checkpoint), trained for
    `steps` steps on the train split, without the trainer's final eval and samples."""
    cfg = config_lib.load_config(os.path.join(CONFIGS, config),
                                 [f'{k}={v}' for k, v in overrides.items()])
    save_trained_run(workdir, cfg, prepare(cfg),
                     data.train_iterator(cfg.data, cfg.train.batch_size, seed=0), steps)
    return cfg


@pytest.fixture(scope='module')
def image_run(tmp_path_factory, tfds_dir):
    """A 2-layer, 16-wide Gated PixelCNN on digits after 20 steps, and its codec. The config is
    test_pixelcnn's training run, so the persistent jit cache shares their compiled steps."""
    workdir = str(tmp_path_factory.mktemp('pixelcnn_run'))
    cfg = _run(workdir, 'gated_pixelcnn_digits.py', {
        'data.tfds_dir': tfds_dir, 'model.hidden': 16, 'model.num_layers': 2,
        'model.first_kernel_size': 3, 'model.class_conditional': False, 'train.batch_size': 16,
        'train.steps': 60, 'optim.warmup_steps': 5, 'optim.lr': 3e-3, 'optim.ema_decay': 0.0},
        steps=20)
    codec = compress_lib.load_codec(cfg, workdir)
    codec.stepper.rows = 64        # code in chunks of 64 images, so test_images span two
    return workdir, cfg, codec


@pytest.fixture(scope='module')
def test_images(image_run):
    """The first 100 test digits (two chunks of model calls: 64 + 36 images)."""
    _, cfg, _ = image_run
    batch = next(data.eval_batches(cfg.data, 100))
    return batch['image'].astype(np.uint8)


def _save(path, images):
    np.save(path, images)
    return str(path)


def test_quantize_is_exact_and_keeps_every_symbol():
    logits = np.array([[0.0, 0.0, 0.0, 0.0], [10.0, 0.0, -50.0, 1.0]])
    freqs = compress_lib.quantize(logits)
    np.testing.assert_array_equal(freqs[0], [2 ** 22] * 4)
    assert (freqs.sum(axis=1) == 2 ** 24).all() and (freqs >= 1).all()
    # floor(p * 2^24) for symbols 1 and 3, the minimum 1 for symbol 2 (p = 1e-26), the rest to 0
    p = np.exp(logits[1] - 10.0)
    p /= p.sum()
    assert freqs[1, 1] == math.floor(p[1] * 2 ** 24) == 761
    assert freqs[1, 3] == math.floor(p[3] * 2 ** 24) and freqs[1, 2] == 1
    assert freqs[1, 0] == 2 ** 24 - freqs[1, 1:].sum()


@pytest.mark.integration
def test_images_round_trip_and_cost_what_the_model_says(image_run, test_images, tmp_path):
    _, _, codec = image_run
    original = _save(tmp_path / 'digits.npy', test_images)
    packed, restored = str(tmp_path / 'digits.dulz'), str(tmp_path / 'restored.npy')
    stats = compress_lib.compress_file(codec, original, packed)
    compress_lib.decompress_file(codec, packed, restored)
    np.testing.assert_array_equal(np.load(restored), test_images)
    # the model's own NLL (float32, one parallel pass) in bits over the same images
    stepper = codec.stepper
    batch = {'image': test_images, 'label': np.zeros(len(test_images), np.int32)}
    nats = float(np.sum(jax.jit(stepper.task.eval_metrics)(stepper.params, batch, None)[
        'nats_per_image']))
    nll_bits = nats / math.log(2)
    payload_bits = 8 * stats['payload_bytes']
    assert stats['header_bytes'] + stats['payload_bytes'] == os.path.getsize(packed)
    assert nll_bits * 0.99 < payload_bits <= nll_bits * 1.01, (payload_bits, nll_bits)
    np.testing.assert_allclose(stats['ideal_bits'], nll_bits, rtol=1e-3)


@pytest.mark.parametrize('bad, fragment', [
    (np.zeros((3, 8, 7, 1), np.uint8), 'of shape (3, 8, 7, 1)'),
    (np.zeros((3, 8, 8, 1), np.int64), 'holds a int64 array'),
    (np.full((3, 8, 8, 1), 17, np.uint8), 'pixel value 17'),
])
@pytest.mark.integration
def test_wrong_images_are_refused(image_run, bad, fragment, tmp_path):
    _, _, codec = image_run
    output = tmp_path / 'out.dulz'
    with pytest.raises(UserError, match=fragment.replace('(', r'\(').replace(')', r'\)')):
        compress_lib.compress_file(codec, _save(tmp_path / 'bad.npy', bad), str(output))
    assert not output.exists() and os.listdir(tmp_path) == ['bad.npy']


@pytest.mark.integration
def test_another_model_truncation_and_damage_are_refused(image_run, test_images, tmp_path):
    _, cfg, codec = image_run
    packed = str(tmp_path / 'packed.dulz')
    compress_lib.compress_file(codec, _save(tmp_path / 'x.npy', test_images[:8]), packed)
    with open(packed, 'rb') as f:
        blob = f.read()
    restored = tmp_path / 'restored.npy'
    # a file made with another model (the same architecture, other parameters) is refused
    perturbed = jax.tree.map(lambda x: x * 1.01, codec.stepper.params)
    other = compress_lib.make_codec(cfg, codec.stepper.task, perturbed)
    other_file = str(tmp_path / 'other.dulz')
    compress_lib.compress_file(other, str(tmp_path / 'x.npy'), other_file)
    with pytest.raises(UserError, match='different model or checkpoint'):
        compress_lib.decompress_file(codec, other_file, str(restored))
    for name, damaged, fragment in [('short', blob[:-4], 'truncated'),
                                    ('header', blob[:30], 'truncated'),
                                    ('magic', b'XXXX' + blob[4:], 'not a file written by'),
                                    ('flip', blob[:-8] + bytes([blob[-8] ^ 0xFF]) + blob[-7:],
                                     'damaged')]:
        path = tmp_path / f'{name}.dulz'
        path.write_bytes(damaged)
        with pytest.raises(UserError, match=fragment):
            compress_lib.decompress_file(codec, str(path), str(restored))
        assert not restored.exists(), name
    assert not [f for f in os.listdir(tmp_path) if f.startswith('.')]   # no temp files left


def test_bytes_round_trip_with_the_transformer_kv_cache(tmp_path):
    # a byte-level GPT with a 32-byte context and random weights: coding is exact whatever the
    # model's quality (a stand-in data spec, so no text corpus needs preparing)
    cfg = config_lib.load_config(os.path.join(CONFIGS, 'tiny_shakespeare_char.py'), [
        'data.text_vocab=bytes', 'data.seq_len=32', 'model.num_layers=1', 'model.num_heads=2',
        'model.embed_dim=32', 'model.mlp_dim=64'])
    spec = DataSpec(name='bytes', kind='text', shape=(32,), num_levels=256, num_classes=0,
                    vocab=None, train_split='train', eval_split='validation', num_train=1,
                    num_eval=1)
    task = make_task(cfg, spec)
    rng = np.random.default_rng(0)
    shapes = nn.meta.unbox(jax.eval_shape(task.init, jax.random.key(0),
                                          {'tokens': np.zeros((1, 32), np.int32)}))
    params = jax.tree.map(lambda s: rng.normal(0.0, 0.3, s.shape).astype(s.dtype), shapes)
    codec = compress_lib.make_codec(cfg, task, params)
    text = ('def f(x):\n    return x * 2  # \u00e9\u00e8 bytes > 127\n' * 5).encode()
    for name, payload in [('text', text), ('empty', b''), ('one', b'x')]:
        original = tmp_path / f'{name}.txt'
        original.write_bytes(payload)
        packed, restored = str(tmp_path / f'{name}.dulz'), str(tmp_path / f'{name}.out')
        compress_lib.compress_file(codec, str(original), packed)
        compress_lib.decompress_file(codec, packed, restored)
        with open(restored, 'rb') as f:
            assert f.read() == payload, name
    assert len(text) % 32 and len(text) > 64    # several windows, the last one partial


@pytest.mark.integration
def test_another_process_decodes_what_this_one_coded(image_run, test_images, tmp_path):
    """The promise the format makes: decoding in a fresh process on the same
    machine reproduces the encoder's probabilities bit for bit."""
    workdir, _, _ = image_run
    original = _save(tmp_path / 'x.npy', test_images[:3])
    packed, restored = str(tmp_path / 'x.dulz'), str(tmp_path / 'y.npy')
    assert cli.main(['compress', '--workdir', workdir, '--input', original,
                     '--output', packed]) == 0
    subprocess.run([sys.executable, '-m', 'dul_jax.cli', 'decompress', '--workdir', workdir,
                    '--input', packed, '--output', restored], check=True, cwd=REPO)
    np.testing.assert_array_equal(np.load(restored), test_images[:3])


@pytest.mark.integration
def test_command_line(image_run, test_images, tmp_path, capsys):
    workdir, _, _ = image_run
    original = _save(tmp_path / 'x.npy', test_images[:4])
    packed, restored = str(tmp_path / 'x.dulz'), str(tmp_path / 'y.npy')
    assert cli.main(['compress', '--workdir', workdir, '--input', original,
                     '--output', packed]) == 0
    assert 'bits/dim coded' in capsys.readouterr().out
    assert cli.main(['decompress', '--workdir', workdir, '--input', packed,
                     '--output', restored]) == 0
    np.testing.assert_array_equal(np.load(restored), test_images[:4])
    assert cli.main(['decompress', '--workdir', workdir, '--input', original,
                     '--output', str(tmp_path / 'z')]) == 2
    assert 'not a file written by' in capsys.readouterr().err


@pytest.mark.integration
def test_a_file_decodes_with_its_own_checkpoint_after_the_run_trains_on(image_run, test_images,
                                                                        tmp_path, capsys):
    source, cfg, _ = image_run
    workdir = str(tmp_path / 'run')
    shutil.copytree(source, workdir)
    original = _save(tmp_path / 'x.npy', test_images[:3])
    packed, restored = str(tmp_path / 'x.dulz'), str(tmp_path / 'y.npy')
    assert cli.main(['compress', '--workdir', workdir, '--input', original,
                     '--output', packed]) == 0
    assert compress_lib.checkpoint_step(packed) == 20
    # the run trains on: a newer checkpoint with other parameters
    setup = prepare(cfg)
    state = restore_state(os.path.join(workdir, 'checkpoints'), setup.abstract_state())
    ckpt = Checkpointer(os.path.join(workdir, 'checkpoints'), async_save=False)
    ckpt.save(21, state.replace(params=jax.tree.map(lambda x: x * 1.01, state.params)),
              force=True)
    ckpt.close()
    assert cli.main(['decompress', '--workdir', workdir, '--input', packed,
                     '--output', restored]) == 0
    np.testing.assert_array_equal(np.load(restored), test_images[:3])
    shutil.rmtree(os.path.join(workdir, 'checkpoints', '20'))
    capsys.readouterr()
    assert cli.main(['decompress', '--workdir', workdir, '--input', packed,
                     '--output', str(tmp_path / 'z.npy')]) == 2
    assert 'checkpoint step 20' in capsys.readouterr().err


def _one_sentence(message, path):
    assert str(path) in message and '\n' not in message and message.endswith('.'), message


@pytest.mark.integration
def test_damaged_headers_and_unusable_inputs_are_one_sentence_naming_the_file(
        image_run, test_images, tmp_path):
    _, _, codec = image_run
    packed = str(tmp_path / 'packed.dulz')
    compress_lib.compress_file(codec, _save(tmp_path / 'x.npy', test_images[:3]), packed)
    with open(packed, 'rb') as f:
        blob = f.read()
    count = _FIXED.size                        # the image count: the first u64 of the shape
    restored = tmp_path / 'restored.npy'
    for name, damaged, fragment in [
            # the count's high byte flipped: (2^56 + 3) x 64 symbols, exabytes to decode into
            ('count', blob[:count] + b'\x01' + blob[count + 1:],
             'claims 4,611,686,018,427,388,096 symbols, more than its 88 payload'),
            ('height', blob[:count + 8] + (9).to_bytes(8, 'big') + blob[count + 16:],
             r'damaged header \(shape \(3, 9, 8, 1\) for a model of images\)'),
            ('empty', b'', 'not a file written by')]:
        path = tmp_path / f'{name}.dulz'
        path.write_bytes(damaged)
        with pytest.raises(UserError, match=fragment) as e:
            compress_lib.decompress_file(codec, str(path), str(restored))
        _one_sentence(str(e.value), path)
        assert not restored.exists(), name
    original = tmp_path / 'x.npy'
    cut = tmp_path / 'cut.npy'
    cut.write_bytes(original.read_bytes()[:-10])
    empty = tmp_path / 'empty.npy'
    empty.write_bytes(b'')
    none = _save(tmp_path / 'none.npy', test_images[:0])
    for path, fragment in [(cut, 'is not a readable .npy file'),
                           (empty, r'is not a readable .npy file \(No data left in file\)'),
                           (none, r'holds no images \(shape \(0, 8, 8, 1\)\)')]:
        with pytest.raises(UserError, match=fragment) as e:
            compress_lib.compress_file(codec, str(path), str(tmp_path / 'out.dulz'))
        _one_sentence(str(e.value), path)
    assert not (tmp_path / 'out.dulz').exists()


class _SkewedStepper:
    """A stand-in model for 2x2 images of 17 levels: skewed logits that change with the rows
    coded side by side, as a real model's last bits do (so a damaged row count misdecodes)."""
    rows, length = 64, 4

    def start(self, rows):
        return rows, 0

    def next(self, state):
        rows, t = state
        return state, np.tile(8.0 * np.sin(rows * np.arange(1.0, 18.0) + t), (rows, 1))

    def feed(self, state, symbols):
        return state[0], state[1] + 1


def test_every_damaged_header_byte_is_one_sentence_naming_the_file(tmp_path):
    """Each byte of the header flipped in turn (byte 16, in the image count, once reached
    constriction's AssertionError): one UserError sentence, and nothing written. The step is
    the command's, which loads that checkpoint (and refuses a step it does not keep)."""
    spec = types.SimpleNamespace(shape=(2, 2, 1), num_levels=17)
    codec = Codec('image', spec, bytes(32), _SkewedStepper())
    images = np.random.default_rng(0).integers(0, 17, (3, 2, 2, 1)).astype(np.uint8)
    packed = str(tmp_path / 'x.dulz')
    header = compress_lib.compress_file(codec, _save(tmp_path / 'x.npy', images),
                                        packed)['header_bytes']
    with open(packed, 'rb') as f:
        blob = f.read()
    step = _FIXED.size + 4 * 8 + 64
    assert header == _FIXED.size + 4 * 8 + _TAIL.size == step + 16   # step, then payload words
    restored = tmp_path / 'restored.npy'
    for offset in [o for o in range(header) if not step <= o < step + 8]:
        path = tmp_path / f'byte_{offset}.dulz'
        path.write_bytes(blob[:offset] + bytes([blob[offset] ^ 0xFF]) + blob[offset + 1:])
        with pytest.raises(UserError) as e:
            compress_lib.decompress_file(codec, str(path), str(restored))
        _one_sentence(str(e.value), path)
        assert not restored.exists(), offset
