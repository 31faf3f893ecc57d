"""Lossless compression with a run's model against gzip, bzip2, xz and PNG on the same data.

  python benchmarks/entropy_coding.py --workdir RUN [--num 100] [--bytes 20000]

Images (a pixelcnn, image autoregressive or vae run): the first --num images of its eval split;
the standard coders get the raw uint8 array (one byte per pixel, as `dul-jax compress` reads it
from .npy), PNG gets each image as its own file (1-bit for 2-level data, else 8-bit gray of the raw
levels) and all of them as one tiled image. Text (a byte-level autoregressive run): the first
--bytes bytes of the validation split. Prints a markdown table: bytes per image (or bits per
byte), and encode/decode seconds; our coder's result is checked to decode exactly.
"""

import argparse
import bz2
import gzip
import io
import lzma
import os
import tempfile
import time

import numpy as np
from PIL import Image

from dul_jax import compress, data
from dul_jax.train import loop


def timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


def standard_coders(raw: bytes) -> list[tuple[str, int, float, float]]:
    rows = []
    for name, pack, unpack in [
            ('gzip -9', lambda b: gzip.compress(b, 9), gzip.decompress),
            ('bzip2 -9', lambda b: bz2.compress(b, 9), bz2.decompress),
            ('xz -9e', lambda b: lzma.compress(b, preset=9 | lzma.PRESET_EXTREME),
             lzma.decompress)]:
        packed, enc = timed(pack, raw)
        restored, dec = timed(unpack, packed)
        assert restored == raw
        rows.append((name, len(packed), enc, dec))
    return rows


def png_bytes(image: np.ndarray, levels: int) -> bytes:
    """One (H, W, 1|3) image of raw levels as an optimized PNG."""
    pixels = image[..., 0] if image.shape[-1] == 1 else image
    picture = Image.fromarray(pixels.astype(bool)) if levels == 2 else Image.fromarray(pixels)
    buffer = io.BytesIO()
    picture.save(buffer, format='PNG', optimize=True)
    return buffer.getvalue()


def png_decode(blob: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(blob)))


def png_coders(images: np.ndarray, levels: int) -> list[tuple[str, int, float, float]]:
    each, enc = timed(lambda: [png_bytes(im, levels) for im in images])
    _, dec = timed(lambda: [png_decode(b) for b in each])
    grid, enc_grid = timed(png_bytes, np.concatenate(list(images), axis=0), levels)
    _, dec_grid = timed(png_decode, grid)
    return [('PNG, one file per image', sum(map(len, each)), enc, dec),
            ('PNG, all images in one', len(grid), enc_grid, dec_grid)]


def ours(codec, path: str, suffix: str) -> tuple[int, float, float, dict]:
    with tempfile.TemporaryDirectory() as tmp:
        packed, restored = os.path.join(tmp, 'x.dulz'), os.path.join(tmp, 'y' + suffix)
        stats, enc = timed(compress.compress_file, codec, path, packed)
        _, dec = timed(compress.decompress_file, codec, packed, restored)
        with open(path, 'rb') as a, open(restored, 'rb') as b:
            assert a.read() == b.read(), 'the round trip is not exact'
        return os.path.getsize(packed), enc, dec, stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--workdir', required=True)
    parser.add_argument('--num', type=int, default=100, help='images to code')
    parser.add_argument('--bytes', type=int, default=20000, help='text bytes to code')
    parser.add_argument('--raw-params', action='store_true',
                        help='code with the raw params, not the EMA (for very short runs)')
    args = parser.parse_args()
    cfg = loop.load_config_of(args.workdir)
    codec = compress.load_codec(cfg, args.workdir, ema=not args.raw_params)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, 'input')
        if codec.kind != 'text':
            images = next(data.eval_batches(cfg.data, args.num))['image'].astype(np.uint8)
            path += '.npy'
            np.save(path, images)
            raw, count, unit = images.tobytes(), len(images), 'image'
            dims = images[0].size
        else:
            tokens = next(data.eval_batches(cfg.data, -(-args.bytes // cfg.data.seq_len)))
            raw = tokens['tokens'].astype(np.uint8).tobytes()[:args.bytes]
            with open(path, 'wb') as f:
                f.write(raw)
            count, unit, dims = len(raw), 'byte', 1
        size, enc, dec, stats = ours(codec, path, '.npy' if codec.kind != 'text' else '')
        kind = cfg.model.get('kind', 'gpt')
        name = f'ours ({cfg.task}, {kind}; {stats["header_bytes"]} B header)'
        rows = [(name, size, enc, dec)]
        rows += standard_coders(raw)
        if codec.kind != 'text':
            rows += png_coders(images, codec.levels)
    ideal = stats['ideal_bits'] / (count * dims)
    print(f'{cfg.data.name}: {count:,} {unit}s ({len(raw):,} raw bytes), model from '
          f'{args.workdir}; its NLL on them: {ideal:.4f} bits/{"dim" if dims > 1 else "byte"}')
    payload_bits = 8 * stats['payload_bytes']
    print(f'coded payload {payload_bits:,} bits against the model\'s {stats["ideal_bits"]:,.0f} '
          f'bits: {100 * (payload_bits / stats["ideal_bits"] - 1):+.3f}% (header '
          f'{stats["header_bytes"]} bytes); decoded exactly')
    per = 'bytes/image' if codec.kind != 'text' else 'bits/byte'
    print(f'\n| coder | total bytes | {per} | encode s | decode s | encode, decode {unit}s/s |')
    print('|---|---|---|---|---|---|')
    for name, total, enc_s, dec_s in rows:
        value = total / count if codec.kind != 'text' else 8 * total / count
        print(f'| {name} | {total:,} | {value:.2f} | {enc_s:.3f} | {dec_s:.3f} | '
              f'{count / enc_s:,.1f}, {count / max(dec_s, 1e-9):,.1f} |')


if __name__ == '__main__':
    main()
