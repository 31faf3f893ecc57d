"""The compressed file format, written by `dul-jax compress` and read by `dul-jax decompress`.

Integers big-endian: magic b'DULZ', version u8, kind u8 (1 images, 2 bytes, 3 images coded
bits-back with bitsback.LATENT_BITS and its fixed initial words), levels u16, precision u8, ndim
u8, shape (ndim x u64), sha256 of the model (config + params), sha256 of the original data, the
checkpoint step coded with (u64; decompression restores that step, so a file stays decodable
after the run trains further), payload length in 32-bit words (u64), then the payload
(little-endian uint32 words). Outputs are written to a temporary file and renamed only after
success, and decompression checks the original's sha256 before writing anything.
"""

import hashlib
import json
import math
import struct
from typing import TYPE_CHECKING

import jax
import numpy as np

from dul_jax import storage
from dul_jax.compress.rows import PRECISION
from dul_jax.errors import UserError

if TYPE_CHECKING:   # command.py imports this module
    from dul_jax.compress.command import Codec

MAGIC = b'DULZ'
VERSION = 3                      # 2: PixelCNNs from cached activations; 3: checkpoint step
KINDS = {'image': 1, 'text': 2, 'bitsback': 3}
_FIXED = struct.Struct('>4sBBHBB')   # magic, version, kind, levels, precision, ndim
_TAIL = struct.Struct('>32s32sQQ')   # model sha256, data sha256, checkpoint step, payload words


# ---- digests ------------------------------------------------------------------------------------

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


def _digest(codec: 'Codec', data) -> bytes:
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


def _header(codec: 'Codec', shape: tuple[int, ...], digest: bytes, words: int) -> bytes:
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
    if kind not in KINDS.values() or precision != PRECISION \
            or ndim != (1 if kind == KINDS['text'] else 4):
        raise UserError(f'{path} is not a file this run can decode: its header is damaged (kind '
                        f'{kind}, precision {precision}, {ndim} dimensions); use an intact file.')
    end = _FIXED.size + 8 * ndim + _TAIL.size
    if len(blob) < end:
        raise UserError(f'{path} is truncated (its header is incomplete); use the complete file.')
    shape = struct.unpack_from(f'>{ndim}Q', blob, _FIXED.size)
    return (kind, levels, precision, shape,
            *_TAIL.unpack_from(blob, _FIXED.size + 8 * ndim), end)


def checkpoint_step(path: str) -> int:
    """The checkpoint step the compressed file at `path` was coded with."""
    return _header_fields(_read(path)[:4096], path)[6]  # a header is under 2,200 bytes


def _parse(blob: bytes, path: str, codec: 'Codec'):
    """(shape, data sha256, payload words) from a compressed file, or one UserError sentence."""
    kind, levels, _, shape, model, digest, _, num_words, end = _header_fields(blob, path)
    if model != codec.fingerprint:
        raise UserError(f'{path} was compressed with a different model or checkpoint than the '
                        'run in --workdir; pass the --workdir it was compressed with.')
    if kind != KINDS[codec.kind] or levels != codec.levels:   # the model's own: damage
        raise UserError(f'{path} is not a file this run can decode: its header is damaged (kind '
                        f'{kind}, {levels} levels for a model of {codec.kind}s with '
                        f'{codec.levels}); use an intact file.')
    if len(blob) != end + 4 * num_words:
        raise UserError(f'{path} has {len(blob) - end} payload bytes where its header says '
                        f'{4 * num_words}: it is truncated or damaged; use the complete file.')
    _check_shape(shape, codec, num_words, path)
    words = np.frombuffer(blob, dtype='<u4', offset=end).astype(np.uint32)
    return shape, digest, words


def _check_shape(shape, codec: 'Codec', num_words: int, path: str) -> None:
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
