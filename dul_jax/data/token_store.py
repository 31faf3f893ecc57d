"""Text splits as token ids in an ArrayRecord file, read window by window (data.text_store =
'array_record'), so no process holds a whole split in memory.

A store is two files beside the prepared data set (its TFDS data_dir, so a gs:// data.tfds_dir
holds them too): `tokens-SPLIT-VOCAB.array_record`, records of `chunk_tokens` token ids each (the
last may be shorter) as raw bytes of the smallest unsigned dtype, and `tokens-SPLIT-VOCAB.json`
with the dtype, chunk size, counts and (for 'chars') the vocabulary. The ids and their order are
exactly those of sources.text_tokens. The JSON is written last, so a store without it is
unfinished and is rebuilt; the records go to a temporary name first and are renamed into place.
"""

import codecs
import collections
import functools
import json
import os
import shutil
import tempfile
import threading

import grain
import numpy as np
from array_record.python.array_record_module import ArrayRecordWriter

from dul_jax import storage
from dul_jax.data import download
from dul_jax.data.catalog import LOCAL_BUILDERS, data_source, prepared_builder, text_feature
from dul_jax.errors import UserError

CHUNK_TOKENS = 2**16     # tokens per record: one or two records cover a window of up to this
CACHE_CHUNKS = 32        # decoded records a reader keeps (a few MB)
FORMAT = 1               # bump when the layout changes: older stores are then rebuilt
# group_size:1 makes every record its own compressed block, read alone (what grain expects).
WRITER_OPTIONS = 'group_size:1,zstd:3'


def token_dtype(num_levels):
    """The smallest unsigned dtype that holds ids 0 .. num_levels - 1."""
    return np.dtype(np.uint8 if num_levels <= 256 else
                    np.uint16 if num_levels <= 65536 else np.uint32)


def store_base(data_dir, split, text_vocab):
    """The store's path without extension: add '.array_record' or '.json'."""
    # Files, not a subfolder: catalog._prepared_at_url uploads a local data_dir's files only.
    return storage.path(data_dir) / f'tokens-{split}-{text_vocab}'


def _records_path(base):
    return base.parent / f'{base.name}.array_record'


def _meta_path(base):
    return base.parent / f'{base.name}.json'


def temp_path(base):
    """Where this process writes the records before renaming them into place."""
    return base.parent / f'.{base.name}.array_record.tmp{os.getpid()}'


def read_meta(base):
    """The store's JSON if the store is complete and of this FORMAT, else None (to be rebuilt)."""
    text = storage.read_text(_meta_path(base))
    if text is None or not _records_path(base).exists():
        return None
    try:
        meta = json.loads(text)
        complete = (meta['format'] == FORMAT and meta['num_records']
                    == -(-meta['num_tokens'] // meta['chunk_tokens']))
    except (ValueError, KeyError, TypeError, ZeroDivisionError):
        return None
    return meta if complete else None


# ---- writing ----

def split_pieces(name, source_dir, tfds_dir, split):
    """The split's text as a stream of byte strings, one example at a time, in the order (and with
    the newlines) of sources.split_text."""
    source = data_source(name, split, source_dir, tfds_dir)
    if name in LOCAL_BUILDERS:
        # Examples are stored in a hashed order; the keys (small) give the text's order.
        keys = [source[i]['key'] for i in range(len(source))]
        for i in sorted(range(len(source)), key=keys.__getitem__):
            yield source[i]['text']
        return
    feature = text_feature(prepared_builder(name, source_dir, tfds_dir))
    for i in range(len(source)):
        if i:
            yield b'\n'
        yield source[i][feature]


@functools.cache   # once per data set, not per split
def stream_char_vocab(name, source_dir, tfds_dir):
    """sources.char_vocab without holding any split: one pass collecting distinct characters."""
    splits = prepared_builder(name, source_dir, tfds_dir).info.splits
    decoder, chars = codecs.getincrementaldecoder('utf-8')(), set()
    try:
        for split in sorted(splits):   # joined with nothing between, as char_vocab does
            for piece in split_pieces(name, source_dir, tfds_dir, split):
                chars.update(decoder.decode(piece))
        decoder.decode(b'', final=True)
    except UnicodeDecodeError:
        raise UserError(f"data set {name!r} is not valid UTF-8, so it has no character vocabulary; "
                        f"set --config.data.text_vocab to 'bytes'.") from None
    return ''.join(sorted(chars))


def write_store(base, pieces, text_vocab, vocab=None, chunk_tokens=CHUNK_TOKENS, **identity):
    """Writes the token ids of the byte strings `pieces` as a store at `base`, holding at most one
    chunk and one piece's ids; returns its metadata. `vocab`: the characters, for 'chars'."""
    num_levels = 256 if text_vocab == 'bytes' else len(vocab)
    dtype = token_dtype(num_levels)
    meta_path, records_path = _meta_path(base), _records_path(base)
    if meta_path.exists():
        meta_path.unlink()   # a store being rewritten must not look complete meanwhile
    records_path.parent.mkdir(parents=True, exist_ok=True)
    # array_record writes local files only: for a URL, write here and upload the whole file.
    if storage.is_url(base):
        handle, temp = tempfile.mkstemp(suffix='.array_record')
        os.close(handle)
    else:
        temp = str(temp_path(base))
    encode = _encoder(text_vocab, vocab)
    writer, closed = ArrayRecordWriter(temp, WRITER_OPTIONS), False
    chunk, filled, num_tokens, num_records = np.empty(chunk_tokens, dtype), 0, 0, 0
    try:
        for piece in pieces:
            ids = encode(piece)
            while len(ids):
                take = min(len(ids), chunk_tokens - filled)
                chunk[filled:filled + take] = ids[:take]
                filled, ids, num_tokens = filled + take, ids[take:], num_tokens + take
                if filled == chunk_tokens:
                    writer.write(chunk.tobytes())
                    filled, num_records = 0, num_records + 1
        encode(b'', final=True)
        if filled:
            writer.write(chunk[:filled].tobytes())
            num_records += 1
        writer.close()
        closed = True
        if storage.is_url(base):
            with open(temp, 'rb') as src, records_path.open('wb') as dst:
                shutil.copyfileobj(src, dst, 1 << 24)
        else:
            os.replace(temp, records_path)
            download.share(records_path)   # beside the prepared data set, readable by all too
    finally:
        if not closed:
            writer.close()
        if os.path.exists(temp):
            os.remove(temp)
    meta = {'format': FORMAT, **identity, 'text_vocab': text_vocab, 'vocab': vocab,
            'dtype': dtype.name, 'chunk_tokens': chunk_tokens, 'num_tokens': num_tokens,
            'num_records': num_records}
    storage.write_atomic(meta_path, json.dumps(meta) + '\n')
    if not storage.is_url(meta_path):
        download.share(meta_path)
    return meta


def _encoder(text_vocab, vocab):
    """piece -> token ids, as sources.text_tokens maps a whole split; a character split between
    two pieces is decoded whole (final=True at the end refuses a cut one)."""
    if text_vocab == 'bytes':
        return lambda piece, final=False: np.frombuffer(piece, dtype=np.uint8)
    decoder = codecs.getincrementaldecoder('utf-8')()
    vocab_points = np.frombuffer(vocab.encode('utf-32-le'), dtype=np.uint32)

    def encode(piece, final=False):
        code_points = np.frombuffer(decoder.decode(piece, final).encode('utf-32-le'), np.uint32)
        return np.searchsorted(vocab_points, code_points)

    return encode


def ensure(name, source_dir, tfds_dir, split, text_vocab, chunk_tokens=CHUNK_TOKENS):
    """(base, metadata) of the split's store in the prepared data set's folder, written on first
    use (streaming over the examples; for 'chars', after a streaming pass for the vocabulary)."""
    base = store_base(prepared_builder(name, source_dir, tfds_dir).data_dir, split, text_vocab)
    meta = read_meta(base)
    if meta is None:
        vocab = stream_char_vocab(name, source_dir, tfds_dir) if text_vocab == 'chars' else None
        pieces = split_pieces(name, source_dir, tfds_dir, split)
        try:
            meta = write_store(base, pieces, text_vocab, vocab, chunk_tokens,
                               data_set=name, split=split)
        except UnicodeDecodeError:
            raise UserError(f"split {split!r} of {name!r} is not valid UTF-8, so it has no "
                            f"character tokens; set --config.data.text_vocab to 'bytes'.") from None
    return base, meta


# ---- reading ----

class TokenWindows:
    """sources.TextWindows over a store: windows of seq_len tokens every `stride` tokens, each read
    from the one or two records (chunks) that cover it, recent chunks kept in a small LRU cache."""

    def __init__(self, base, meta, seq_len, stride, cache_chunks=CACHE_CHUNKS):
        self.base, self.meta, self.seq_len, self.stride = base, meta, seq_len, stride
        self.cache_chunks = cache_chunks
        self.chunk_tokens, self.dtype = meta['chunk_tokens'], np.dtype(meta['dtype'])
        self._lock, self._source, self._cache = threading.Lock(), None, collections.OrderedDict()

    @classmethod
    def open(cls, base, seq_len, stride, cache_chunks=CACHE_CHUNKS):
        meta = read_meta(base)
        if meta is None:
            raise UserError(f'no complete token store at {base}; it is written on first use of '
                            f'the data set with data.text_store=array_record.')
        return cls(base, meta, seq_len, stride, cache_chunks)

    def __getstate__(self):   # for grain worker processes: no reader, lock or cache
        return {'base': self.base, 'meta': self.meta, 'seq_len': self.seq_len,
                'stride': self.stride, 'cache_chunks': self.cache_chunks}

    def __setstate__(self, state):
        self.__init__(**state)

    def __len__(self):
        return (self.meta['num_tokens'] - self.seq_len) // self.stride + 1

    def read(self, indices):
        starts = np.asarray(indices, dtype=np.int64) * self.stride
        firsts = starts // self.chunk_tokens
        lasts = (starts + self.seq_len - 1) // self.chunk_tokens
        span = int((lasts - firsts).max(initial=0))
        needed = np.unique(np.concatenate([np.minimum(firsts + k, lasts) for k in range(span + 1)]))
        chunks = self._chunks([int(c) for c in needed])
        out = np.empty((len(starts), self.seq_len), dtype=np.int32)
        for row, (start, first, last) in enumerate(zip(starts, firsts, lasts, strict=True)):
            offset = start - first * self.chunk_tokens
            if first == last:
                out[row] = chunks[first][offset:offset + self.seq_len]
                continue
            filled = 0
            for c in range(first, last + 1):
                piece = chunks[c][offset:offset + self.seq_len - filled]
                out[row, filled:filled + len(piece)] = piece
                filled, offset = filled + len(piece), 0
        return {'tokens': out}

    def _chunks(self, ids):
        """{chunk id: token array} for `ids`, reading the ones not cached in one call."""
        with self._lock:
            if self._source is None:
                self._source = self._open_source()
            found = {}
            for c in ids:
                if c in self._cache:
                    self._cache.move_to_end(c)
                    found[c] = self._cache[c]
        missing = [c for c in ids if c not in found]
        if missing:
            for c, record in zip(missing, self._source.__getitems__(missing), strict=True):
                found[c] = np.frombuffer(record, dtype=self.dtype)
            with self._lock:
                for c in missing[-self.cache_chunks:]:
                    self._cache[c] = found[c]
                while len(self._cache) > self.cache_chunks:
                    self._cache.popitem(last=False)
        return found

    def _open_source(self):
        path = _records_path(self.base)
        source = grain.sources.ArrayRecordDataSource([os.fspath(path)])
        if len(source) != self.meta['num_records']:
            raise UserError(f'{path} has {len(source)} records but its JSON says '
                            f'{self.meta["num_records"]}; delete both files to rebuild them.')
        return source
