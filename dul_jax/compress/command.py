"""`dul-jax compress` and `dul-jax decompress`: the run's coder, its inputs (images as .npy,
or any file as bytes) and the two commands."""

import dataclasses
import io
import math
import time

import jax
import numpy as np

from dul_jax import storage
from dul_jax.compress import bitsback
from dul_jax.compress.format import (
    _digest,
    _header,
    _parse,
    _read,
    _write_atomically,
    checkpoint_step,
    model_fingerprint,
)
from dul_jax.compress.rows import PositionDecoder, decode_rows, encode_rows
from dul_jax.errors import UserError
from dul_jax.tasks.capabilities import PixelLikelihood, Posterior

# ---- the run's model -------------------------------------------------------------------------

@dataclasses.dataclass
class Codec:
    kind: str              # 'image', 'text' or 'bitsback' (images, coded by compress/bitsback.py)
    spec: object           # the run's DataSpec
    fingerprint: bytes     # sha256 of the model config and parameters
    stepper: PositionDecoder   # for 'bitsback': a bitsback.LatentCoder
    step: int = 0          # the checkpoint step of the parameters (0: not from a checkpoint)

    @property
    def levels(self) -> int:
        return self.spec.num_levels


def load_codec(cfg, workdir: str, ema: bool = True, step: int | None = None) -> Codec:
    """The coder of the run in `workdir`: its checkpoint at `step` (default: the latest) on one
    device, with the EMA params where the run keeps them (ema=False: the raw params, e.g. of a
    run too short for the EMA to have warmed up)."""
    from dul_jax.train.run import StepNotKept, open_run
    from dul_jax.train.state import eval_params
    try:
        setup, state = open_run(cfg, workdir, step, one_device=True)
    except StepNotKept as e:   # `step` is a compressed file's
        raise UserError(f'the file was coded with checkpoint step {step} of {workdir}, which '
                        f'is no longer kept (kept: {sorted(e.kept)}); decode it with a copy of '
                        'that checkpoint.') from None
    params = eval_params(state) if ema else state.params
    codec = make_codec(setup.cfg, setup.task, jax.device_get(params), workdir)
    return dataclasses.replace(codec, step=int(state.step))


def make_codec(cfg, task, params, workdir: str = 'this run') -> Codec:
    """The coder of `task` (built from `cfg`) with `params` (host arrays)."""
    try:
        stepper = task.position_decoder(params)
    except UserError as e:
        raise UserError(f'cannot code with the run in {workdir}: {e}') from None
    if stepper is None and isinstance(task, Posterior) and isinstance(task, PixelLikelihood):
        coder = bitsback.LatentCoder(task, params)
        return Codec('bitsback', task.spec, model_fingerprint(cfg, params), coder)
    if stepper is None:
        raise UserError(f'task "{task.name}" of the run in {workdir} gives no exact likelihood '
                        'to code with; use a "pixelcnn", "autoregressive" or "vae" run.')
    return Codec(task.spec.kind, task.spec, model_fingerprint(cfg, params), stepper)


# ---- data <-> rows of symbols -------------------------------------------------------------------

def _read_images(path: str, spec) -> np.ndarray:
    try:
        images = np.load(io.BytesIO(_read(path)), allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:   # EOFError: an empty or cut-short file
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f'{path} is not a readable .npy file ({reason}); pass a uint8 array saved '
                        'with numpy.save.') from None
    want = (spec.num_levels, tuple(spec.shape))
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != want[1]:
        raise UserError(f'{path} holds a {images.dtype} array of shape {images.shape}, but this '
                        f'model codes uint8 images (N, {", ".join(map(str, want[1]))}); convert '
                        'the input to that shape and dtype.')
    if not len(images):
        raise UserError(f'{path} holds no images (shape {images.shape}); pass at least one.')
    if int(images.max()) >= spec.num_levels:
        raise UserError(f'{path} has pixel value {int(images.max())}, but this model codes '
                        f'levels 0..{spec.num_levels - 1}; quantize the images to '
                        f'{spec.num_levels} levels first.')
    return images


def _to_rows(codec: Codec, data) -> tuple[np.ndarray, np.ndarray]:
    """(symbols (rows, width), lengths (rows,)) in coding order."""
    if codec.kind == 'image':
        rows = data.reshape(data.shape[0], -1).astype(np.int32)
        return rows, np.full(len(rows), rows.shape[1], np.int64)
    window = codec.stepper.length
    num = -(-len(data) // window)
    rows = np.zeros((num, window), np.int32)
    flat = np.frombuffer(data, np.uint8)
    rows.reshape(-1)[:len(flat)] = flat
    lengths = np.clip(len(flat) - np.arange(num) * window, 0, window)
    return rows, lengths


# ---- files --------------------------------------------------------------------------------------

def compress_file(codec: Codec, input_path: str, output_path: str) -> dict:
    """Compress `input_path` to `output_path`; returns sizes, ideal bits and seconds."""
    start = time.perf_counter()
    initial_bits = 0
    if codec.kind == 'text':
        data = _read(input_path)
        shape = (len(data),)
    else:
        data = _read_images(input_path, codec.spec)
        shape = data.shape
    if codec.kind == 'bitsback':
        words, ideal_bits = bitsback.encode(codec.stepper, data)
        symbols, initial_bits = data.size, 32 * len(bitsback.seed_words(codec.stepper.latent_dim))
        if len(data) > 32 * len(words):   # _check_shape's bound; never seen in practice
            raise UserError(f'{input_path} codes in under one bit per image, which this format '
                            'cannot hold; compress more data at once.')
    else:
        rows, lengths = _to_rows(codec, data)
        words, ideal_bits = encode_rows(codec.stepper, rows, lengths)
        symbols = int(lengths.sum())
    header = _header(codec, shape, _digest(codec, data), len(words))
    _write_atomically(output_path, header + words.astype('<u4').tobytes())
    return {'symbols': symbols, 'input_bytes': storage.path(input_path).stat().length,
            'header_bytes': len(header), 'payload_bytes': 4 * len(words),
            'ideal_bits': ideal_bits, 'initial_bits': initial_bits,
            'seconds': time.perf_counter() - start}


def decompress_file(codec: Codec, input_path: str, output_path: str) -> dict:
    """Decompress `input_path` to `output_path` (written only if the checksum matches)."""
    start = time.perf_counter()
    blob = _read(input_path)
    shape, digest, words = _parse(blob, input_path, codec)
    if codec.kind == 'image':
        lengths = np.full(shape[0], codec.stepper.length, np.int64)
    elif codec.kind == 'text':
        window = codec.stepper.length
        lengths = np.clip(shape[0] - np.arange(-(-shape[0] // window)) * window, 0, window)
    try:
        if codec.kind == 'bitsback':
            data = bitsback.decode(codec.stepper, words, shape[0], tuple(shape[1:]))
            lengths = np.full(shape[0], math.prod(shape[1:]), np.int64)
        else:
            rows = decode_rows(codec.stepper, words, lengths, codec.stepper.length)
    except (ValueError, RuntimeError) as e:   # constriction refuses some damaged payloads
        raise UserError(f'{input_path} is not a file this run can decode ({e}): it is damaged; '
                        'use an intact file.') from None
    if codec.kind != 'text':
        if codec.kind == 'image':
            data = rows.astype(np.uint8).reshape(shape)
        buffer = io.BytesIO()
        np.save(buffer, data)
        payload = buffer.getvalue()
    else:
        data = payload = rows.astype(np.uint8).reshape(-1)[:shape[0]].tobytes()
    if _digest(codec, data) != digest:
        raise UserError(f'{input_path} decodes to data whose sha256 differs from the original\'s:'
                        ' it is damaged (nothing was written); use an intact file.')
    _write_atomically(output_path, payload)
    return {'symbols': int(lengths.sum()), 'output_bytes': len(payload),
            'seconds': time.perf_counter() - start}


def command(name: str, cfg, workdir: str, input_path: str, output_path: str) -> dict:
    """`dul-jax compress` / `decompress`: code one file and print one line about it."""
    if storage.path(input_path) == storage.path(output_path):
        raise UserError('--input and --output are the same file; write the output elsewhere.')
    step = checkpoint_step(input_path) if name == 'decompress' else None
    codec = load_codec(cfg, workdir, step=step)
    if name == 'compress':
        r = compress_file(codec, input_path, output_path)
        total = r['header_bytes'] + r['payload_bytes']
        unit = 'byte' if codec.kind == 'text' else 'dim'
        per = max(r['symbols'], 1)
        initial = f' (incl. {r["initial_bits"]} initial bits)' if r['initial_bits'] else ''
        model = 'under the model' if codec.kind != 'bitsback' else \
            'negative ELBO at the coded latents'
        print(f'{input_path} ({r["input_bytes"]:,} bytes, {r["symbols"]:,} symbols) -> '
              f'{output_path}: {total:,} bytes ({r["header_bytes"]} header), '
              f'{8 * r["payload_bytes"] / per:.4f} bits/{unit} coded{initial} vs '
              f'{r["ideal_bits"] / per:.4f} {model}, {r["seconds"]:.1f}s')
    else:
        r = decompress_file(codec, input_path, output_path)
        print(f'{input_path} -> {output_path}: {r["output_bytes"]:,} bytes, {r["symbols"]:,} '
              f'symbols, checksum verified, {r["seconds"]:.1f}s')
    return r
