"""Lossless compression with a trained autoregressive model and range coding (constriction).

  dul-jax compress   --workdir RUN --input X --output Y
  dul-jax decompress --workdir RUN --input Y --output X

What X is depends on the run in RUN:
- an image run (task 'pixelcnn', or 'autoregressive' on an image data set): X is a .npy file of a
  uint8 array (N, H, W, C) of levels in [0, L), with H, W, C and L those of the run's data set
  (e.g. (N, 28, 28, 1) with values 0/1 for binarized MNIST). Images are coded in raster order.
- a byte-level text run (task 'autoregressive', data.text_vocab='bytes'): X is any file, coded as
  raw bytes in windows of data.seq_len (the model's context), each window from the start symbol.
- a latent-variable run (a task with `posterior` and `pixel_log_probs` and no exact
  one-position-at-a-time model, e.g. 'vae'): X is images as above, coded with bits-back ANS
  (compress/bitsback.py); the rest of this docstring is about the autoregressive coder.
Class-conditional models are refused: the labels would have to be coded too.

The decoder runs the model on the symbols decoded so far, one position at a time (the PixelCNN
from its cached activations, models/pixelcnn_decode.py; the Transformer with its KV cache). The
encoder runs exactly the same jitted steps on exactly the same inputs (the true prefix), so the
probabilities agree bit for bit on the same machine whatever the convolution or attention kernels
do with rounding; a parallel forward pass would agree only up to float rounding. Compressing and
decompressing in separate processes is tested on the CPU; on a GPU, XLA picks convolution and
matmul kernels by timing them at compile time, so run both sides with
XLA_FLAGS=--xla_gpu_autotune_level=0 (or on the CPU) to keep the kernels, and the bits, the same.
On the host the float32 logits become frequencies deterministically (float64 softmax,
floor(p * 2^24), every symbol at least 1, the remainder to the most probable symbol), which
constriction's range coder turns into bits.

File format (integers big-endian): magic b'DULZ', version u8, kind u8 (1 images, 2 bytes,
3 images coded bits-back with bitsback.LATENT_BITS and its fixed initial words),
levels u16, precision u8, ndim u8, shape (ndim x u64), sha256 of the model (config + params),
sha256 of the original data, the checkpoint step coded with (u64; decompression restores that
step, so a file stays decodable after the run trains further), payload length in 32-bit words
(u64), then the payload (little-endian uint32 words). Outputs are written to a temporary file
and renamed only after success, and decompression checks the original's sha256 before writing
anything.
"""

import dataclasses
import hashlib
import io
import json
import math
import struct
import time
from typing import Protocol

import constriction
import jax
import numpy as np

from dul_jax import storage
from dul_jax.errors import UserError
from dul_jax.tasks.capabilities import PixelLikelihood, Posterior

MAGIC = b'DULZ'
VERSION = 3                      # 2: PixelCNNs from cached activations; 3: checkpoint step
PRECISION = 24                   # frequency resolution: 2^24, constriction's default for queues
KINDS = {'image': 1, 'text': 2, 'bitsback': 3}
LAG = 16                         # positions the encoder lets the device run ahead of the coder
_FIXED = struct.Struct('>4sBBHBB')   # magic, version, kind, levels, precision, ndim
_TAIL = struct.Struct('>32s32sQQ')   # model sha256, data sha256, checkpoint step, payload words


# ---- probabilities -> frequencies -----------------------------------------------------------

def quantize(logits: np.ndarray, precision: int = PRECISION) -> np.ndarray:
    """(rows, L) float logits -> (rows, L) integer frequencies (as float64) summing to 2^precision.

    Deterministic on the host: float64 softmax, floor(p * 2^precision), at least 1 per symbol
    (every symbol stays codable), and the remainder added to each row's most probable symbol.
    """
    z = np.asarray(logits, np.float64)
    p = np.exp(z - z.max(axis=-1, keepdims=True))
    p /= p.sum(axis=-1, keepdims=True)
    freqs = np.maximum(np.floor(p * 2.0 ** precision), 1.0)
    rows = np.arange(freqs.shape[0])
    freqs[rows, freqs.argmax(axis=-1)] += 2.0 ** precision - freqs.sum(axis=-1)
    return freqs


# ---- the model, one position at a time -------------------------------------------------------

class PositionDecoder(Protocol):
    """What a task's `position_decoder(params)` returns: its exact model, one position at a time,
    on `rows` rows side by side. `rows` changes which kernels run and so the logits' last bits:
    changing it needs a VERSION bump."""
    rows: int
    length: int  # positions per row

    def start(self, rows: int): ...                     # -> state before position 0
    def next(self, state): ...                          # -> (state, (rows, levels) logits)
    def feed(self, state, symbols: np.ndarray): ...     # -> state with the symbols written


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


def model_fingerprint(cfg, params) -> bytes:
    """sha256 of what determines the probabilities: task, model and data config, and params."""
    h = hashlib.sha256()
    described = {'task': cfg.task, 'model': cfg.model.to_dict(),
                 'data': {k: cfg.data.get(k) for k in ('name', 'seq_len', 'text_vocab')}}
    h.update(json.dumps(described, sort_keys=True, default=list).encode())
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        a = np.ascontiguousarray(leaf)
        h.update(f'{jax.tree_util.keystr(path)}:{a.dtype}:{a.shape}'.encode())
        h.update(a.tobytes())
    return h.digest()


def load_codec(cfg, workdir: str, ema: bool = True, step: int | None = None) -> Codec:
    """The coder of the run in `workdir`: its checkpoint at `step` (default: the latest) on one
    device, with the EMA params where the run keeps them (ema=False: the raw params, e.g. of a
    run too short for the EMA to have warmed up)."""
    from dul_jax.train.checkpoint import Checkpointer, restore_state
    from dul_jax.train.setup import prepare
    from dul_jax.train.state import eval_params
    from dul_jax.train.workdir import kept_spec
    cfg = cfg.copy_and_resolve_references()
    cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor = 1, 1, 1
    if 'slices' in cfg.mesh:
        cfg.mesh.slices = 1
    cfg.train.batch_size = cfg.eval.batch_size = cfg.train.grad_accum = 1   # one device
    setup = prepare(cfg, devices=jax.devices()[:1], spec=kept_spec(cfg, workdir))  # no data
    directory = storage.path(workdir) / 'checkpoints'
    if step is not None:
        ckpt = Checkpointer(directory, async_save=False)
        kept = ckpt.all_steps()
        ckpt.close()
        if step not in kept:
            raise UserError(f'the file was coded with checkpoint step {step} of {workdir}, which '
                            f'is no longer kept (kept: {sorted(kept)}); decode it with a copy of '
                            'that checkpoint.')
    state = restore_state(directory, setup.abstract_state(), step=step)
    params = eval_params(state) if ema else state.params
    codec = make_codec(cfg, setup.task, jax.device_get(params), workdir)
    return dataclasses.replace(codec, step=int(state.step))


def make_codec(cfg, task, params, workdir: str = 'this run') -> Codec:
    """The coder of `task` (built from `cfg`) with `params` (host arrays)."""
    try:
        stepper = task.position_decoder(params)
    except UserError as e:
        raise UserError(f'cannot code with the run in {workdir}: {e}') from None
    if stepper is None and isinstance(task, Posterior) and isinstance(task, PixelLikelihood):
        from dul_jax.compress import bitsback
        coder = bitsback.LatentCoder(task, params)
        return Codec('bitsback', task.spec, model_fingerprint(cfg, params), coder)
    if stepper is None:
        raise UserError(f'task "{task.name}" of the run in {workdir} gives no exact likelihood '
                        'to code with; use a "pixelcnn", "autoregressive" or "vae" run.')
    return Codec(task.spec.kind, task.spec, model_fingerprint(cfg, params), stepper)


# ---- coding rows of symbols -------------------------------------------------------------------

def _chunks(num_rows: int, most: int):
    """(start, stop, rows per model call): the same on both sides, from the header's row count
    and the stepper's fixed width."""
    width = max(min(num_rows, most), 1)
    return [(s, min(s + width, num_rows), width) for s in range(0, num_rows, width)]


def encode_rows(stepper, symbols: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, float]:
    """Range-code row r's first lengths[r] symbols; returns (uint32 words, ideal bits under the
    quantized model). Rows are coded side by side, position by position."""
    encoder = constriction.stream.queue.RangeEncoder()
    family = constriction.stream.model.Categorical(perfect=False)
    ideal_bits = 0.0
    for start, stop, width in _chunks(len(symbols), stepper.rows):
        block = np.zeros((width, symbols.shape[1]), np.int32)
        block[:stop - start] = symbols[start:stop]
        block_lengths = np.zeros(width, np.int64)
        block_lengths[:stop - start] = lengths[start:stop]
        state, pending = stepper.start(width), []
        for t in range(int(block_lengths.max()) + LAG):
            if t < block_lengths.max():
                state, logits = stepper.next(state)
                pending.append((t, logits))    # fetched LAG positions later: the device runs ahead
                state = stepper.feed(state, block[:, t])
            if len(pending) > LAG or (pending and t >= block_lengths.max()):
                ideal_bits += _encode_position(encoder, family, *pending.pop(0), block,
                                               block_lengths)
    return encoder.get_compressed(), ideal_bits


def _encode_position(encoder, family, t, logits, block, block_lengths) -> float:
    """Code position t of the rows that reach it; returns its ideal bits."""
    active = block_lengths > t
    freqs = quantize(np.asarray(logits)[active])
    coded = block[active, t]
    encoder.encode(coded, family, freqs / 2.0 ** PRECISION)
    return float(np.sum(PRECISION - np.log2(freqs[np.arange(len(coded)), coded])))


def decode_rows(stepper, words: np.ndarray, lengths: np.ndarray, width: int) -> np.ndarray:
    """The inverse of encode_rows: (rows, width) symbols (zeros past each row's length)."""
    decoder = constriction.stream.queue.RangeDecoder(words)
    family = constriction.stream.model.Categorical(perfect=False)
    out = np.zeros((len(lengths), width), np.int32)
    for start, stop, rows in _chunks(len(lengths), stepper.rows):
        block_lengths = np.zeros(rows, np.int64)
        block_lengths[:stop - start] = lengths[start:stop]
        state = stepper.start(rows)
        for t in range(int(block_lengths.max())):
            state, logits = stepper.next(state)
            active = block_lengths > t
            freqs = quantize(np.asarray(logits)[active])
            symbols = np.zeros(rows, np.int32)
            symbols[active] = decoder.decode(family, freqs / 2.0 ** PRECISION)
            out[start:stop, t] = symbols[:stop - start]
            state = stepper.feed(state, symbols)
    return out


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


def _digest(codec: Codec, data) -> bytes:
    return hashlib.sha256(data if codec.kind == 'text' else data.tobytes()).digest()


# ---- files --------------------------------------------------------------------------------------

def _read(path: str) -> bytes:
    """The bytes of --input (a local path or a gs:// URL)."""
    target = storage.path(path)
    if not target.is_file():
        raise UserError(f'--input {path} does not exist; pass an existing file.')
    return target.read_bytes()


def _write_atomically(path: str, payload: bytes) -> None:
    target = storage.path(path)
    if target.is_dir():
        raise UserError(f'--output {path} is a folder; pass a file name.')
    if not storage.is_url(target) and not target.parent.is_dir():
        raise UserError(f'the folder of --output {path} does not exist; create it first.')
    storage.write_atomic(target, payload)   # a temp file renamed; one upload on gs://


def _header(codec: Codec, shape: tuple[int, ...], digest: bytes, words: int) -> bytes:
    fixed = _FIXED.pack(MAGIC, VERSION, KINDS[codec.kind], codec.levels, PRECISION, len(shape))
    return (fixed + struct.pack(f'>{len(shape)}Q', *shape)
            + _TAIL.pack(codec.fingerprint, digest, codec.step, words))


def _header_fields(blob: bytes, path: str):
    """(kind, levels, precision, shape, model sha256, data sha256, step, payload words, header
    length) of a compressed file's header, or one UserError sentence."""
    if len(blob) < _FIXED.size or blob[:4] != MAGIC:
        raise UserError(f'{path} is not a file written by `dul-jax compress`; pass one that is.')
    _, version, kind, levels, precision, ndim = _FIXED.unpack_from(blob)
    if version != VERSION:
        raise UserError(f'{path} has format version {version}, but this dul-jax reads version '
                        f'{VERSION}; decompress it with the dul-jax that wrote it.')
    end = _FIXED.size + 8 * ndim + _TAIL.size
    if len(blob) < end:
        raise UserError(f'{path} is truncated (its header is incomplete); use the complete file.')
    shape = struct.unpack_from(f'>{ndim}Q', blob, _FIXED.size)
    return (kind, levels, precision, shape,
            *_TAIL.unpack_from(blob, _FIXED.size + 8 * ndim), end)


def checkpoint_step(path: str) -> int:
    """The checkpoint step the compressed file at `path` was coded with."""
    return _header_fields(_read(path)[:4096], path)[6]  # a header is under 2,200 bytes


def _parse(blob: bytes, path: str, codec: Codec):
    """(shape, data sha256, payload words) from a compressed file, or one UserError sentence."""
    kind, levels, precision, shape, model, digest, _, num_words, end = _header_fields(blob, path)
    if model != codec.fingerprint or kind != KINDS[codec.kind] or levels != codec.levels \
            or precision != PRECISION:
        raise UserError(f'{path} was compressed with a different model or checkpoint than the '
                        'run in --workdir; pass the --workdir it was compressed with.')
    if len(blob) != end + 4 * num_words:
        raise UserError(f'{path} has {len(blob) - end} payload bytes where its header says '
                        f'{4 * num_words}: it is truncated or damaged; use the complete file.')
    _check_shape(shape, codec, num_words, path)
    words = np.frombuffer(blob, dtype='<u4', offset=end).astype(np.uint32)
    return shape, digest, words


def _check_shape(shape, codec: Codec, num_words: int, path: str) -> None:
    """One UserError sentence unless the header's shape is the model's and its symbols fit the
    payload: a damaged shape must not make the decoder allocate for 2^60 images."""
    image = codec.kind != 'text'
    if (len(shape) != 4 or tuple(shape[1:]) != tuple(codec.spec.shape)) if image \
            else len(shape) != 1:
        raise UserError(f'{path} has a damaged header (shape {tuple(shape)} for a model of '
                        f'{codec.kind}s); use an intact file.')
    # Every symbol costs at least -log2 of the largest frequency a quantized row can give one
    # symbol, so the payload bounds the symbol count (plus the coder's final words).
    # Bits-back: an image can cost less than its pixels (its latent's bits come back), but
    # bitsback.encode writes no file of more images than payload bits.
    least_bits = -math.log2(1.0 - (codec.levels - 1) / 2.0 ** PRECISION)
    symbols, unit = math.prod(shape), 'symbols'
    if codec.kind == 'bitsback':
        least_bits, symbols, unit = 1.0, shape[0], 'images'
    if symbols * least_bits > 32 * (num_words + 2):
        raise UserError(f'{path} has a damaged header: it claims {symbols:,} {unit}, more than '
                        f'its {4 * num_words:,} payload bytes can hold; use an intact file.')


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
        from dul_jax.compress import bitsback
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
            from dul_jax.compress import bitsback
            data = bitsback.decode(codec.stepper, words, shape[0], tuple(shape[1:]))
            lengths = np.full(shape[0], math.prod(shape[1:]), np.int64)
        else:
            rows = decode_rows(codec.stepper, words, lengths, codec.stepper.length)
    except (ValueError, RuntimeError) as e:   # constriction refuses some damaged payloads
        raise UserError(f'{input_path} could not be decoded ({e}); it is damaged.') from None
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
