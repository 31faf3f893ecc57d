"""TFDS builders for the local image corpora (raw files in data.dir, fetched when missing).

Each example is {'id': position in the raw source, 'image': uint8 (H, W, 1), 'label': 0..9 (when
labelled)}. Images are stored as raw uint8 tensors, not PNG, because encoding PNG inside TFDS needs
TensorFlow, which this project does not install.
"""

import gzip
import hashlib
import pathlib

import numpy as np
import scipy.io
import tensorflow_datasets as tfds

from dul_jax.data.download import required_files
from dul_jax.data.local_builder import LocalBuilder
from dul_jax.errors import UserError


def _image_features(shape, labelled):
    features = {
        'id': tfds.features.Scalar(dtype=np.int64),
        'image': tfds.features.Tensor(shape=shape, dtype=np.uint8),
    }
    if labelled:
        features['label'] = tfds.features.ClassLabel(num_classes=10)
    return tfds.features.FeaturesDict(features)


class _LocalImageBuilder(LocalBuilder, skip_registration=True):
    NUM_LEVELS = 0        # gray levels: DataSpec.num_levels
    IMAGE_SHAPE = ()
    LABELLED = False

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            description=self.__doc__,
            features=_image_features(self.IMAGE_SHAPE, self.LABELLED),
            metadata=tfds.core.MetadataDict(),
        )

    def _generate_examples(self, images, labels, ids):
        for i, image_id in enumerate(ids):
            example = {'id': int(image_id), 'image': images[i]}
            if labels is not None:
                example['label'] = int(labels[i])
            yield int(image_id), example


class DulDigits(_LocalImageBuilder):
    """scikit-learn's 1,797 8x8 digits, 17 gray levels (0..16); fixed split 1,500 / 297 test."""

    LOCAL_NAME = 'digits'
    NUM_LEVELS = 17
    IMAGE_SHAPE = (8, 8, 1)
    LABELLED = True
    NUM_TRAIN = 1500

    def _split_generators(self, dl_manager):
        from sklearn.datasets import load_digits  # slow import, only needed to prepare
        digits = load_digits()
        images = digits.images.astype(np.uint8)[..., None]
        # The split is an order by a hash of the index, so it does not depend on any RNG's version.
        order = sorted(range(len(images)),
                       key=lambda i: hashlib.sha256(f'digits/{i}'.encode()).digest())
        train_ids = np.array(sorted(order[:self.NUM_TRAIN]))
        test_ids = np.array(sorted(order[self.NUM_TRAIN:]))
        self.info.metadata['split_rule'] = "sort by sha256('digits/<index>'), first 1500 train"
        return {split: self._generate_examples(images[ids], digits.target[ids], ids)
                for split, ids in (('train', train_ids), ('test', test_ids))}


class DulBinarizedMnist(_LocalImageBuilder):
    """Binarized MNIST (Larochelle & Murray 2011), 28x28 in {0,1}: 50,000 / 10,000 / 10,000."""

    LOCAL_NAME = 'binarized_mnist'
    NUM_LEVELS = 2
    IMAGE_SHAPE = (28, 28, 1)
    LABELLED = False
    SPLITS = ('train', 'validation', 'test')
    REQUIRED_FILES = required_files(LOCAL_NAME)   # train, valid, test: the order of SPLITS

    def _split_generators(self, dl_manager):
        generators = {}
        for split, path in zip(self.SPLITS, self.record_source_hashes(), strict=True):
            images = read_amat(path).reshape(-1, 28, 28, 1)
            if images.max() > 1:
                raise UserError(f'{path} holds values above 1, so it is not binarized MNIST; '
                                f'set --config.data.dir to the folder with the original files.')
            generators[split] = self._generate_examples(images, None, np.arange(len(images)))
        return generators


MATLAB_HEADER = b'MATLAB 5.0 MAT-file'


def read_amat(path):
    """uint8 (N, 784) from a binarized MNIST .amat: Larochelle's text (one image a line, 784 '0'/'1'
    separated by spaces) or the MATLAB v5 copies of it that circulate under the same names."""
    with open(path, 'rb') as f:
        if f.read(len(MATLAB_HEADER)) == MATLAB_HEADER:
            return scipy.io.loadmat(path)['X'].astype(np.uint8)
    raw = np.frombuffer(pathlib.Path(path).read_bytes(), dtype=np.uint8)
    images = _exact_layout(raw)
    if images is not None:
        return images
    # Any other spacing, vectorized too: every byte must be a digit 0/1 or whitespace, no two
    # digits adjacent (so each value is one digit), 784 per line.
    kind = _AMAT_BYTE_KIND[raw]
    digit = kind == 1
    # Only the digits and line ends: a line's count is the gap between its newlines, less one.
    kept = raw[digit | (raw == ord('\n'))]
    line_ends = np.flatnonzero(kept == ord('\n'))
    counts = np.diff(np.concatenate([[-1], line_ends, [len(kept)]])) - 1
    if (not kind.all() or (digit[1:] & digit[:-1]).any()
            or not np.isin(counts, (0, 784)).all() or not counts.any()):
        raise UserError(f'{path} is neither a MATLAB file nor text lines of 784 zeros and ones, so '
                        f'it is not binarized MNIST; set --config.data.dir to the original files.')
    return (kept[kept != ord('\n')] - ord('0')).reshape(-1, 784)


def _exact_layout(raw):
    """uint8 (N, 784) where `raw` is exactly Larochelle's layout (a digit, then a space or, after
    the 784th, a newline), else None: a file as published is then a strided view of its bytes,
    checked in a few passes instead of classified byte by byte."""
    if not raw.size or raw.size % (2 * 784):
        return None
    lines = raw.reshape(-1, 2 * 784)
    pixels = lines[:, 0::2] - np.uint8(ord('0'))   # '0' -> 0, '1' -> 1; anything else wraps > 1
    separators = lines[:, 1::2]
    if ((pixels > 1).any() or (separators[:, :-1] != ord(' ')).any()
            or (separators[:, -1] != ord('\n')).any()):
        return None
    return pixels


# byte -> 0 (not allowed in a text .amat), 1 (a pixel digit), 2 (whitespace)
_AMAT_BYTE_KIND = np.zeros(256, dtype=np.uint8)
_AMAT_BYTE_KIND[[ord('0'), ord('1')]] = 1
_AMAT_BYTE_KIND[[ord(c) for c in ' \t\r\n']] = 2


def read_idx(path):
    """Reads a gzip-compressed IDX file (big-endian header: magic, dims; then uint8 data)."""
    with gzip.open(path, 'rb') as f:
        data = f.read()
    ndim = data[3]
    if data[:3] != b'\x00\x00\x08' or ndim not in (1, 3):
        raise UserError(f'{path} is not an IDX file of uint8 data; set --config.data.dir to the '
                        f'folder with the original MNIST files.')
    dims = np.frombuffer(data, dtype='>u4', count=ndim, offset=4)
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


class DulMnistTest(_LocalImageBuilder):
    """The MNIST test set (10,000 digits, 256 levels): first 8,000 train, last 2,000 test."""

    LOCAL_NAME = 'mnist_test'
    NUM_LEVELS = 256
    IMAGE_SHAPE = (28, 28, 1)
    LABELLED = True
    NUM_TRAIN = 8000
    REQUIRED_FILES = required_files(LOCAL_NAME)   # images, labels

    def _split_generators(self, dl_manager):
        image_path, label_path = self.record_source_hashes()
        images = read_idx(image_path)[..., None]
        labels = read_idx(label_path)
        if images.shape[1:] != (28, 28, 1) or len(images) != len(labels):
            raise UserError(f'{image_path} and {label_path} do not hold matching 28x28 images and '
                            f'labels; set --config.data.dir to the folder with the original files.')
        ids = np.arange(len(images))
        n = self.NUM_TRAIN
        return {
            'train': self._generate_examples(images[:n], labels[:n], ids[:n]),
            'test': self._generate_examples(images[n:], labels[n:], ids[n:]),
        }
