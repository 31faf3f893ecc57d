"""The ArrayRecord token store (data.text_store='array_record') against the in-memory text path:
the same windows, counts, vocabulary and training batches; a half-written store is rebuilt."""

import json
import pathlib
import types

import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds
from array_record.python.array_record_module import ArrayRecordWriter
from conftest import gcs_emulator

from dul_jax import data, storage
from dul_jax.data import sources, token_store
from dul_jax.errors import UserError

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = pathlib.Path(__file__).resolve().parents[1].parent / 'shared' / 'data'
SEQ_LEN = 32
CHUNK = 1000   # small records, so many windows straddle two of them


@pytest.fixture
def make_cfg(tfds_dir):
    def make(name, **overrides):
        cfg = ml_collections.ConfigDict({
            'name': name, 'dir': str(SHARED_DATA), 'tfds_dir': str(tfds_dir),
            'seq_len': SEQ_LEN, 'text_vocab': 'bytes', 'text_store': 'memory'})
        cfg.update(overrides)
        return cfg
    return make


def window_indices(reader, stride, rng, chunk_tokens):
    """A few hundred random windows, plus every window whose start lies just before a chunk
    boundary (they need two records) among the first few boundaries."""
    boundaries = np.arange(1, 6) * chunk_tokens
    straddling = np.concatenate([(boundaries - k) // stride for k in (1, 5, SEQ_LEN - 1)])
    ends = np.array([0, len(reader) - 1])
    return np.concatenate([rng.integers(0, len(reader), 300),
                           np.minimum(straddling, len(reader) - 1), ends])


def assert_same_windows(memory, stream, stride, chunk_tokens, seed=0):
    assert len(memory) == len(stream)
    indices = window_indices(memory, stride, np.random.default_rng(seed), chunk_tokens)
    expected, got = memory.read(indices)['tokens'], stream.read(indices)['tokens']
    assert got.dtype == np.int32 and got.shape == (len(indices), SEQ_LEN)
    np.testing.assert_array_equal(got, expected)


def test_unknown_text_store_is_one_sentence(make_cfg):
    with pytest.raises(UserError, match="--config.data.text_store to 'memory' or 'array_record'"):
        data.describe(make_cfg('python_source', text_store='disk'))


def test_python_source_store_matches_memory(make_cfg):
    """Needs no shared data: the interpreter's standard library, in records of the default size."""
    memory_cfg, stream_cfg = make_cfg('python_source'), make_cfg('python_source',
                                                                 text_store='array_record')
    spec = data.describe(memory_cfg)
    assert data.describe(stream_cfg) == spec
    for split in (spec.train_split, spec.eval_split):
        for training, stride in ((True, 1), (False, SEQ_LEN)):
            memory = sources.split_reader(memory_cfg, spec, split, training)
            stream = sources.split_reader(stream_cfg, spec, split, training)
            assert_same_windows(memory, stream, stride, token_store.CHUNK_TOKENS)


@pytest.mark.parametrize('vocab', ['chars', 'bytes'])
def test_windows_equal_the_memory_windows(make_cfg, shared_data, tfds_dir, tmp_path, vocab):
    cfg = make_cfg('tiny_shakespeare', text_vocab=vocab)
    spec = data.describe(cfg)
    args = ('tiny_shakespeare', str(SHARED_DATA), str(tfds_dir))
    char_set = token_store.stream_char_vocab(*args) if vocab == 'chars' else None
    assert char_set == spec.vocab
    for split in (spec.train_split, spec.eval_split):
        tokens = sources.text_tokens(*args, split, vocab)
        base = tmp_path / f'{split}-{vocab}'
        meta = token_store.write_store(base, token_store.split_pieces(*args, split), vocab,
                                       char_set, chunk_tokens=CHUNK)
        assert meta['num_records'] == -(-len(tokens) // CHUNK) > 100
        assert meta['dtype'] == tokens.dtype.name
        for stride in (1, SEQ_LEN):
            assert_same_windows(sources.TextWindows(tokens, SEQ_LEN, stride),
                                token_store.TokenWindows.open(base, SEQ_LEN, stride), stride, CHUNK)
        # A window longer than a record spans three of them.
        long_windows = token_store.TokenWindows.open(base, 2500, 1).read([0, 1999, 7777])
        np.testing.assert_array_equal(long_windows['tokens'],
                                      sources.TextWindows(tokens, 2500, 1).read([0, 1999, 7777])
                                      ['tokens'])


@pytest.mark.parametrize('vocab', ['chars', 'bytes'])
def test_lengths_and_spec_equal_the_memory_store(make_cfg, shared_data, vocab):
    memory_cfg = make_cfg('tiny_shakespeare', text_vocab=vocab)
    stream_cfg = make_cfg('tiny_shakespeare', text_vocab=vocab, text_store='array_record')
    spec = data.describe(memory_cfg)
    assert data.describe(stream_cfg) == spec
    assert (spec.num_train, spec.num_eval) == (1003854, 1115394 - 1003854)
    assert spec.num_levels == (65 if vocab == 'chars' else 256)
    for split in (spec.train_split, spec.eval_split):
        for training in (True, False):
            assert (len(sources.split_reader(memory_cfg, spec, split, training))
                    == len(sources.split_reader(stream_cfg, spec, split, training)))


def test_a_half_written_store_is_rebuilt(make_cfg, shared_data, tmp_path):
    cfg = make_cfg('tiny_shakespeare', tfds_dir=str(tmp_path / 'tfds'))
    spec = data.describe(cfg)   # prepares the data set (memory store)
    args = ('tiny_shakespeare', str(SHARED_DATA), str(tmp_path / 'tfds'))
    builder = sources.prepared_builder(*args)
    base = token_store.store_base(builder.data_dir, 'train', 'bytes')
    # A crash mid-write: the temporary file has some records, the final name has a cut copy of
    # them, and there is no JSON.
    for path in (token_store.temp_path(base), base.parent / f'{base.name}.array_record'):
        writer = ArrayRecordWriter(str(path), token_store.WRITER_OPTIONS)
        writer.write(b'\0' * 100)
        writer.close()
    assert token_store.read_meta(base) is None
    with pytest.raises(UserError, match='no complete token store'):
        token_store.TokenWindows.open(base, SEQ_LEN, 1)
    _, meta = token_store.ensure(*args, 'train', 'bytes')
    assert meta['num_tokens'] == spec.num_train and token_store.read_meta(base) == meta
    assert not token_store.temp_path(base).exists()
    tokens = sources.text_tokens(*args, 'train', 'bytes')
    assert_same_windows(sources.TextWindows(tokens, SEQ_LEN, 1),
                        token_store.TokenWindows.open(base, SEQ_LEN, 1), 1, meta['chunk_tokens'])
    # A store of another layout version is rebuilt too, not misread.
    meta_path = base.parent / f'{base.name}.json'
    meta_path.write_text(json.dumps({**meta, 'format': token_store.FORMAT + 1}))
    assert token_store.read_meta(base) is None
    assert token_store.ensure(*args, 'train', 'bytes')[1] == meta


def test_train_iterator_gives_the_memory_store_batches(make_cfg, shared_data):
    memory_cfg = make_cfg('tiny_shakespeare', text_vocab='chars')
    stream_cfg = make_cfg('tiny_shakespeare', text_vocab='chars', text_store='array_record')
    for seed in (0, 1):
        memory, stream = (data.train_iterator(cfg, 16, seed=seed)
                          for cfg in (memory_cfg, stream_cfg))
        for _ in range(3):
            np.testing.assert_array_equal(next(memory)['tokens'], next(stream)['tokens'])
    memory, stream = (data.eval_batches(cfg, 64, max_examples=300)
                      for cfg in (memory_cfg, stream_cfg))
    for a, b in zip(memory, stream, strict=True):
        np.testing.assert_array_equal(a['tokens'], b['tokens'])
        np.testing.assert_array_equal(a['mask'], b['mask'])


class DulTestStreamText(tfds.core.GeneratorBasedBuilder):
    """A stand-in for a catalog text set: several examples per split, joined by newlines; over 256
    characters (so uint16 ids), some of them four UTF-8 bytes long."""

    VERSION = tfds.core.Version('1.0.0')
    TEXTS = types.MappingProxyType({
        'train': ('To be, or not to be', ''.join(map(chr, range(0x400, 0x500))), 'that is 🎭'),
        'test': ('in the mind to süffer', 'the slings and arrows 🎯')})

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            'text': tfds.features.Text(), 'title': tfds.features.Text()}))

    def _split_generators(self, dl_manager):
        return {split: self._generate_examples(texts) for split, texts in self.TEXTS.items()}

    def _generate_examples(self, texts):
        for i, text in enumerate(texts):
            yield i, {'text': text, 'title': f'line {i}'}


@pytest.mark.parametrize('vocab', ['chars', 'bytes'])
def test_a_catalog_text_set_streams_like_the_memory_store(make_cfg, tmp_path, vocab):
    DulTestStreamText(data_dir=str(tmp_path), file_format='array_record').download_and_prepare()
    memory_cfg = make_cfg('tfds:dul_test_stream_text', tfds_dir=str(tmp_path), seq_len=4,
                          text_vocab=vocab)
    stream_cfg = make_cfg('tfds:dul_test_stream_text', tfds_dir=str(tmp_path), seq_len=4,
                          text_vocab=vocab, text_store='array_record')
    spec = data.describe(memory_cfg)
    assert data.describe(stream_cfg) == spec
    assert spec.num_levels > 256 if vocab == 'chars' else spec.num_levels == 256
    for split in ('train', 'test'):
        for training in (True, False):
            memory = sources.split_reader(memory_cfg, spec, split, training)
            stream = sources.split_reader(stream_cfg, spec, split, training)
            indices = np.arange(len(memory))
            np.testing.assert_array_equal(stream.read(indices)['tokens'],
                                          memory.read(indices)['tokens'])


@pytest.fixture
def gcs_bucket(monkeypatch):
    """gs://BUCKET on the GCS emulator that tests/test_gcs.py uses."""
    with gcs_emulator('dul-jax-test') as env:
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        yield 'gs://dul-jax-test'


@pytest.mark.integration
def test_a_store_in_a_bucket_is_written_and_read_there(gcs_bucket):
    text = bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8))
    base = storage.path(f'{gcs_bucket}/tfds/x/1.0.0') / 'tokens-train-bytes'
    meta = token_store.write_store(base, [text[:1234], text[1234:]], 'bytes', chunk_tokens=CHUNK)
    assert token_store.read_meta(base) == meta and meta['num_records'] == 5
    memory = sources.TextWindows(np.frombuffer(text, np.uint8), SEQ_LEN, 1)
    assert_same_windows(memory, token_store.TokenWindows.open(base, SEQ_LEN, 1), 1, CHUNK)
