"""How fast binarized MNIST is prepared: the raw-file parse alone, and the whole first use.

    python benchmarks/data_prepare.py [--dir DIR] [--repeats N] [--no-prepare]

DIR (default $DUL_JAX_DATA_DIR, else ../shared/data) holds binarized_mnist/*.amat, as MATLAB v5
copies or Larochelle's text. Prints images/s of `read_amat` (best of N) on each split's file as it
is there; on the same pixels in Larochelle's text layout, written to a temporary folder and
checked against the published sha256 (so these are the bytes a download from his site gives);
and on that text with CRLF line ends, which takes the parser's general path (any whitespace)
instead of its strided one. Then images/s of preparing the whole data set (70,000 images) from
the text files into a fresh tfds_dir, as a first `dul-jax train` or `dul-jax data prepare
binarized_mnist` does: the parse plus TFDS encoding, shuffling and writing the examples.
"""

import argparse
import hashlib
import os
import pathlib
import sys
import tempfile
import time

import numpy as np
import scipy.io

from dul_jax.data import catalog, download
from dul_jax.data.image_builders import MATLAB_HEADER, read_amat

SHARED_DATA = pathlib.Path(__file__).resolve().parents[2] / 'shared' / 'data'


def larochelle_text(pixels) -> bytes:
    """Larochelle's .amat layout: per image one line of 784 '0'/'1' separated by single spaces."""
    chars = np.full((len(pixels), 2 * 784), ord(' '), dtype=np.uint8)
    chars[:, 0::2] = pixels + ord('0')
    chars[:, -1] = ord('\n')
    return chars.tobytes()


def best_rate(path, repeats: int) -> tuple[float, int]:
    """(images/s of the fastest of `repeats` parses of `path`, images)."""
    best = float('inf')
    for _ in range(repeats):
        start = time.perf_counter()
        images = read_amat(path)
        best = min(best, time.perf_counter() - start)
    return len(images) / best, len(images)


def text_copies(source: pathlib.Path, target: pathlib.Path) -> None:
    """Larochelle's text files under `target`, byte for byte, from the files under `source`."""
    for raw in download.RAW_FILES['binarized_mnist']:
        path = source / raw.path
        with open(path, 'rb') as f:
            matlab = f.read(len(MATLAB_HEADER)) == MATLAB_HEADER
        text = larochelle_text(scipy.io.loadmat(path)['X']) if matlab else path.read_bytes()
        if hashlib.sha256(text).hexdigest() != raw.sha256[0]:
            sys.exit(f'{path} does not hold the published pixels of binarized MNIST')
        (target / raw.path).parent.mkdir(parents=True, exist_ok=True)
        (target / raw.path).write_bytes(text)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--dir', default=os.environ.get('DUL_JAX_DATA_DIR') or str(SHARED_DATA))
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--no-prepare', action='store_true',
                        help='time the parse only, not the whole prepare')
    args = parser.parse_args(argv)
    source = pathlib.Path(args.dir).expanduser().resolve()
    with tempfile.TemporaryDirectory() as temp:
        text_dir = pathlib.Path(temp) / 'data'
        text_copies(source, text_dir)
        for raw in download.RAW_FILES['binarized_mnist']:
            crlf = pathlib.Path(temp) / 'crlf.amat'
            crlf.write_bytes((text_dir / raw.path).read_bytes().replace(b'\n', b'\r\n'))
            for label, path in (('as in --dir', source / raw.path), ('text', text_dir / raw.path),
                                ('text with CRLF line ends', crlf)):
                rate, n = best_rate(path, args.repeats)
                print(f'parse {raw.path} ({label}, {n:,} images, {path.stat().st_size:,} bytes): '
                      f'{rate:,.0f} images/s')
        if not args.no_prepare:
            start = time.perf_counter()
            builder = catalog.prepared_builder('binarized_mnist', str(text_dir),
                                               str(pathlib.Path(temp) / 'tfds'))
            seconds = time.perf_counter() - start
            n = sum(split.num_examples for split in builder.info.splits.values())
            print(f'prepare binarized_mnist from text ({n:,} images): {seconds:.1f} s, '
                  f'{n / seconds:,.0f} images/s')
    return 0


if __name__ == '__main__':
    sys.exit(main())
