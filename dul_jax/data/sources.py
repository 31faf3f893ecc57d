"""A data set's DataSpec, and readers that turn example indices into numpy batches.

One way through: `describe` and `split_reader` take the data config to Settings, ask
catalog.entry once what the name stands for, and build the spec or reader from that Entry;
catalog never calls back here.
"""

import dataclasses
import functools
import os
import pathlib

import numpy as np

from dul_jax import storage
from dul_jax.data import arrays, download, synthetic, token_store, toy
from dul_jax.data.catalog import (  # noqa: F401 (data_source, prepared_builder: re-exported)
    DEFAULT_TFDS_DIR,
    Origin,
    data_source,
    entry,
    prepared_builder,
)
from dul_jax.data.spec import DataSpec, Kind
from dul_jax.errors import UserError

DATA_DIR_VARIABLE = 'DUL_JAX_DATA_DIR'   # where data.dir is empty: the raw corpora's folder
DEFAULT_DATA_DIR = '~/.cache/dul_jax/data'
TEXT_VOCABS = ('bytes', 'chars')
TEXT_STORES = ('memory', 'array_record')   # whole splits in memory, or token_store's files
LEVELS_OF_DTYPE = {np.dtype(np.uint8): 256, np.dtype(np.uint16): 65536}


@dataclasses.dataclass(frozen=True)
class Settings:
    """The data config resolved to plain, hashable values (so loaded splits can be cached)."""
    name: str
    source_dir: str
    tfds_dir: str
    seq_len: int | None
    text_vocab: str
    data_url: str = ''    # base URL of a mirror of data.dir's layout; '' = the canonical URLs
    num_levels: int = 0   # image levels; 0 = from the data set
    text_store: str = 'memory'


def settings(data_cfg):
    name = data_cfg.get('name')
    if not name:
        raise UserError('data.name is empty; set --config.data.name to a data set name.')
    # Relative folders resolve against the current directory, like any command-line path.
    source_dir = pathlib.Path(data_cfg.get('dir') or os.environ.get(DATA_DIR_VARIABLE)
                              or DEFAULT_DATA_DIR).expanduser().resolve()
    tfds_dir = str(storage.path(data_cfg.get('tfds_dir') or DEFAULT_TFDS_DIR))   # or a URL
    text_vocab = data_cfg.get('text_vocab') or 'bytes'
    if text_vocab not in TEXT_VOCABS:
        raise UserError(f"data.text_vocab={text_vocab!r} is not known; "
                        f"set --config.data.text_vocab to 'bytes' or 'chars'.")
    text_store = data_cfg.get('text_store') or 'memory'
    if text_store not in TEXT_STORES:
        raise UserError(f"data.text_store={text_store!r} is not known; "
                        f"set --config.data.text_store to 'memory' or 'array_record'.")
    seq_len = data_cfg.get('seq_len')
    num_levels = data_cfg.get('num_levels') or 0
    if not isinstance(num_levels, int) or num_levels < 0 or num_levels == 1:
        raise UserError(f'data.num_levels={num_levels!r} is not 0 (from the data set) or a level '
                        f'count of at least 2; set --config.data.num_levels to one of those.')
    return Settings(str(name), str(source_dir), str(tfds_dir),
                    None if seq_len is None else int(seq_len), text_vocab,
                    download.base_url(data_cfg.get('url')), num_levels, text_store)


def describe(data_cfg):
    """The DataSpec of the configured data set; prepares a local data set on first use."""
    s = settings(data_cfg)
    # Prepared here, with the mirror URL only the config knows; later look-ups find it prepared.
    e = _entry(s)
    if e.origin is Origin.SYNTHETIC:
        return synthetic.describe(data_cfg)
    if e.origin is Origin.TOY:
        return _describe_toy(s)
    if e.origin is Origin.ARRAYS:
        return _describe_arrays(s)
    if e.is_text:
        return _describe_text(s, e)
    return _describe_images(s, e)


def _entry(s):
    return entry(s.name, s.source_dir, s.tfds_dir, s.data_url)


def _describe_images(s, e):
    features = dict(e.builder.info.features.items())
    image, label = features.get('image'), features.get('label')
    if (image is None or None in image.shape or len(image.shape) != 3
            or np.dtype(image.np_dtype) not in LEVELS_OF_DTYPE):
        raise UserError(f"data set {s.name!r} has neither a uint8 or uint16 'image' feature of "
                        f"fixed shape (H, W, C) nor a text feature; set --config.data.name to an "
                        f"image or text data set such as mnist.")
    dtype = np.dtype(image.np_dtype)
    dtype_levels = LEVELS_OF_DTYPE[dtype]
    if s.num_levels > dtype_levels:
        raise UserError(f'data.num_levels={s.num_levels} is more than the {dtype_levels} values of '
                        f'the {dtype} images of {s.name!r}; set --config.data.num_levels '
                        f'to at most {dtype_levels}, or 0.')
    # Our builders state their gray levels; a catalog set is taken to use its dtype's full range
    # unless data.num_levels says fewer (e.g. 2 for tfds:binarized_mnist), checked on every batch.
    train_split, eval_split = _train_and_eval_splits(s.name, e.splits)
    return DataSpec(
        name=s.name, kind=Kind.IMAGE, shape=tuple(image.shape),
        num_levels=s.num_levels or e.levels or dtype_levels,
        num_classes=getattr(label, 'num_classes', None) or 0, vocab=None,
        train_split=train_split, eval_split=eval_split,
        num_train=e.splits[train_split].num_examples,
        num_eval=e.splits[eval_split].num_examples)


def _describe_arrays(s):
    info = arrays.info(s.name)
    if s.num_levels > info['num_levels']:
        raise UserError(f'data.num_levels={s.num_levels} is more than the {info["num_levels"]} '
                        f'levels of {s.name!r}; set --config.data.num_levels to 0.')
    train_split, eval_split = _train_and_eval_splits(s.name, info['splits'])
    return DataSpec(
        name=s.name, kind=Kind.IMAGE, shape=tuple(info['shape']),
        num_levels=s.num_levels or info['num_levels'], num_classes=info['num_classes'],
        vocab=None, train_split=train_split, eval_split=eval_split,
        num_train=info['splits'][train_split], num_eval=info['splits'][eval_split])


def _describe_toy(s):
    mix = toy.mixture(s.name)
    if s.num_levels:
        raise UserError(f'data.num_levels={s.num_levels} applies to image data sets, but '
                        f'{s.name!r} holds real-valued points; set --config.data.num_levels=0.')
    return DataSpec(
        name=s.name, kind=Kind.POINTS, shape=(mix.means.shape[1],), num_levels=0,
        num_classes=len(mix.means), vocab=None, train_split='train', eval_split='test',
        num_train=toy.SPLITS['train'][0], num_eval=toy.SPLITS['test'][0])


def _train_and_eval_splits(name, splits):
    eval_split = next((split for split in ('test', 'validation') if split in splits), None)
    if 'train' not in splits or eval_split is None:
        raise UserError(f"data set {name!r} has splits {', '.join(sorted(splits))}, but training "
                        f"needs 'train' and 'test' or 'validation'; set --config.data.name to "
                        f"another.")
    return 'train', eval_split


def _describe_text(s, e):
    if s.num_levels:
        raise UserError(f'data.num_levels={s.num_levels} applies to image data sets, but '
                        f'{s.name!r} is text; set --config.data.num_levels=0 and choose tokens '
                        f'with data.text_vocab.')
    if s.seq_len is None or s.seq_len < 1:
        raise UserError(f'text data set {s.name!r} needs a positive data.seq_len; '
                        f'set --config.data.seq_len.')
    train_split, eval_split = _train_and_eval_splits(s.name, e.splits)
    if s.text_store == 'array_record':
        # Counts and vocabulary from the stores' JSON (written here on first use), not the tokens.
        train, valid = (token_store.ensure(s.name, s.source_dir, s.tfds_dir, split, s.text_vocab)[1]
                        for split in (train_split, eval_split))
        num_train, num_eval, vocab = train['num_tokens'], valid['num_tokens'], train['vocab']
        if valid['vocab'] != vocab:
            raise UserError(f"the token stores of {s.name!r} under {e.builder.data_dir} have "
                            f"different vocabularies; delete its tokens-* files to rebuild them.")
    else:
        num_train, num_eval = (len(_text_tokens(e, split, s.text_vocab))
                               for split in (train_split, eval_split))
        vocab = _char_vocab(e) if s.text_vocab == 'chars' else None
    shortest = min(num_train, num_eval)
    if s.seq_len > shortest:
        raise UserError(f'data.seq_len={s.seq_len} is longer than a split of {s.name!r} '
                        f'({shortest} tokens); set --config.data.seq_len to at most {shortest}.')
    return DataSpec(
        name=s.name, kind=Kind.TEXT, shape=(s.seq_len,),
        num_levels=256 if vocab is None else len(vocab), num_classes=0, vocab=vocab,
        train_split=train_split, eval_split=eval_split, num_train=num_train, num_eval=num_eval)


# ---- text ----
# Cached per Entry (one per name and folders, see catalog.entry); the by-name forms are for
# callers that hold no Entry.

def split_text(name, source_dir, tfds_dir, split):
    """A text split as one byte string, read into memory: a local corpus's examples in key order,
    concatenated (exactly as stored); a catalog set's text feature in stored order, a newline
    between examples (its sentences or documents)."""
    return _split_text(entry(name, source_dir, tfds_dir), split)


def char_vocab(name, source_dir, tfds_dir):
    """The sorted distinct characters of every split, so ids never depend on the split."""
    return _char_vocab(entry(name, source_dir, tfds_dir))


def text_tokens(name, source_dir, tfds_dir, split, text_vocab):
    """The split as one array of token ids (the smallest unsigned dtype that holds them)."""
    return _text_tokens(entry(name, source_dir, tfds_dir), split, text_vocab)


@functools.cache
def _split_text(e, split):
    source = e.source(split)
    examples = source.__getitems__(list(range(len(source))))
    if e.origin is Origin.LOCAL:
        return b''.join(x['text'] for x in sorted(examples, key=lambda x: x['key']))
    return b'\n'.join(x[e.text_feature] for x in examples)


@functools.cache
def _char_vocab(e):
    text = b''.join(_split_text(e, split) for split in sorted(e.splits))
    try:
        return ''.join(sorted(set(text.decode('utf-8'))))
    except UnicodeDecodeError:
        raise UserError(f"data set {e.name!r} is not valid UTF-8, so it has no character "
                        f"vocabulary; set --config.data.text_vocab to 'bytes'.") from None


@functools.cache
def _text_tokens(e, split, text_vocab):
    text = _split_text(e, split)
    if text_vocab == 'bytes':
        return np.frombuffer(text, dtype=np.uint8)
    vocab = _char_vocab(e)
    code_points = np.frombuffer(text.decode('utf-8').encode('utf-32-le'), dtype=np.uint32)
    vocab_points = np.frombuffer(vocab.encode('utf-32-le'), dtype=np.uint32)
    ids = np.searchsorted(vocab_points, code_points)
    return ids.astype(token_store.token_dtype(len(vocab)))


class TextWindows:
    """Windows of seq_len tokens starting every `stride` tokens; a tail shorter than one stride past
    the last full window is not covered (eval with stride = seq_len drops under seq_len tokens)."""

    def __init__(self, tokens, seq_len, stride):
        self.tokens, self.seq_len, self.stride = tokens, seq_len, stride

    def __len__(self):
        return (len(self.tokens) - self.seq_len) // self.stride + 1

    def read(self, indices):
        starts = np.asarray(indices, dtype=np.int64) * self.stride
        positions = starts[:, None] + np.arange(self.seq_len)
        return {'tokens': self.tokens[positions].astype(np.int32)}


# ---- points ----

class PointArrays:
    """A toy split of 2-D points, generated whole in memory."""

    def __init__(self, points, labels):
        self.points, self.labels = points, labels

    def __len__(self):
        return len(self.points)

    def read(self, indices):
        return {'point': self.points[indices], 'label': self.labels[indices]}


# ---- images ----

class ImageArrays:
    """A split held in memory: our local data sets are small, and a fancy index per batch is far
    faster than decoding examples one by one."""

    def __init__(self, images, labels):
        self.images, self.labels = images, labels

    def __len__(self):
        return len(self.images)

    def read(self, indices):
        return {'image': self.images[indices], 'label': self.labels[indices]}


class ImageStream:
    """A split read from disk batch by batch, for catalog data sets that may not fit in memory."""

    def __init__(self, source):
        self.source = source

    def __len__(self):
        return len(self.source)

    def read(self, indices):
        examples = self.source.__getitems__([int(i) for i in indices])
        return {'image': np.stack([e['image'] for e in examples]),  # uint8 or uint16
                'label': np.array([e.get('label', 0) for e in examples], dtype=np.int32)}


@functools.cache
def _image_arrays(e, split):
    stream = ImageStream(e.source(split))
    whole_split = stream.read(np.arange(len(stream)))
    return ImageArrays(whole_split['image'], whole_split['label'])


def split_reader(data_cfg, spec, split, training):
    """The reader for one split: len() examples (or windows), read(indices) -> batch dict."""
    s = settings(data_cfg)
    e = _entry(s)
    if e.origin is Origin.SYNTHETIC:
        return synthetic.RandomExamples(spec, split)
    if e.origin is Origin.TOY:
        # Points have no levels to check, and describe refuses data.num_levels for them.
        return PointArrays(*toy.split_arrays(s.name, split))
    if spec.is_text:
        # Training may start a window at any token; eval tiles the split without overlap.
        stride = 1 if training else spec.shape[0]
        if s.text_store == 'array_record':
            base, meta = token_store.ensure(s.name, s.source_dir, s.tfds_dir, split, s.text_vocab)
            return token_store.TokenWindows(base, meta, spec.shape[0], stride)
        return TextWindows(_text_tokens(e, split, s.text_vocab), spec.shape[0], stride)
    if e.origin is Origin.ARRAYS:
        reader = ImageArrays(*arrays.split_arrays(s.name, split))
    elif e.origin is Origin.LOCAL:
        reader = _image_arrays(e, split)
    else:
        reader = ImageStream(e.source(split))
    return LevelChecked(reader, s.name, s.num_levels) if s.num_levels else reader


class LevelChecked:
    """Refuses a batch with a pixel at or above data.num_levels: a model would take such a target
    as garbage, not fail, so a wrong override must stop the run."""

    def __init__(self, reader, name, num_levels):
        self.reader, self.name, self.num_levels = reader, name, num_levels

    def __len__(self):
        return len(self.reader)

    def read(self, indices):
        batch = self.reader.read(indices)
        if batch['image'].size and int(batch['image'].max()) >= self.num_levels:
            raise UserError(f'data set {self.name!r} has pixel value {int(batch["image"].max())}, '
                            f'but data.num_levels={self.num_levels}; set --config.data.num_levels '
                            f'above it, or to 0 for the data set\'s own levels.')
        return batch
