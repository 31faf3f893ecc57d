"""Tests of dul_jax.data: the local TFDS builders, the catalog path and the grain pipelines."""

import dataclasses
import gzip
import hashlib
import io
import logging
import pathlib
import types

import grain
import ml_collections
import numpy as np
import pytest
import scipy.io
import tensorflow_datasets as tfds
from PIL import Image

from dul_jax import data
from dul_jax.data import catalog, pipeline, sources, text_builders
from dul_jax.errors import UserError

# The real data sets; tests that need them take conftest's `shared_data` fixture, which skips
# where ../shared/data is absent. `tfds_dir` (conftest) is one prepared-data folder per session.
SHARED_DATA = pathlib.Path(__file__).resolve().parents[1].parent / 'shared' / 'data'


@pytest.fixture
def make_cfg(tfds_dir):
    def make(name, **overrides):
        cfg = ml_collections.ConfigDict({
            'name': name, 'dir': str(SHARED_DATA), 'tfds_dir': str(tfds_dir), 'seq_len': 32,
            'text_vocab': 'bytes'})
        cfg.update(overrides)
        return cfg
    return make


def all_examples(name, split, tfds_dir, source_dir=SHARED_DATA):
    source_dir = None if source_dir is None else str(source_dir)
    source = catalog.data_source(name, split, source_dir, str(tfds_dir))
    return source.__getitems__(list(range(len(source))))


def take(iterator, n):
    return [next(iterator) for _ in range(n)]


def assert_batches_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])


# ---- local builders ----

def test_digits_split_is_fixed_disjoint_and_has_17_levels(make_cfg, tfds_dir):
    from sklearn.datasets import load_digits
    spec = data.describe(make_cfg('digits'))
    assert (spec.kind, spec.shape, spec.num_levels) == ('image', (8, 8, 1), 17)
    assert spec.num_classes == 10
    assert (spec.num_train, spec.num_eval, spec.eval_split) == (1500, 297, 'test')
    train = all_examples('digits', 'train', tfds_dir)
    test = all_examples('digits', 'test', tfds_dir)
    train_ids, test_ids = {e['id'] for e in train}, {e['id'] for e in test}
    assert not train_ids & test_ids and train_ids | test_ids == set(range(1797))
    # A fingerprint of the split: changing the split rule must be a deliberate act.
    fingerprint = hashlib.sha256(str(sorted(test_ids)).encode()).hexdigest()[:16]
    assert fingerprint == DIGITS_TEST_IDS_SHA256_PREFIX
    digits = load_digits()
    for e in test[:20]:
        np.testing.assert_array_equal(e['image'][..., 0], digits.images[e['id']])
        assert e['label'] == digits.target[e['id']]
    assert max(int(e['image'].max()) for e in train) == 16


DIGITS_TEST_IDS_SHA256_PREFIX = '00bed0fea1f147e8'


@pytest.mark.integration
def test_binarized_mnist_sizes_and_values(make_cfg, tfds_dir, shared_data):
    spec = data.describe(make_cfg('binarized_mnist'))
    assert (spec.shape, spec.num_levels, spec.num_classes) == ((28, 28, 1), 2, 0)
    builder = catalog.prepared_builder('binarized_mnist', str(SHARED_DATA), str(tfds_dir))
    sizes = {split: info.num_examples for split, info in builder.info.splits.items()}
    assert sizes == {'train': 50000, 'validation': 10000, 'test': 10000}
    raw = scipy.io.loadmat(SHARED_DATA / 'binarized_mnist/binarized_mnist_test.amat')['X']
    batch = next(data.eval_batches(make_cfg('binarized_mnist'), 500))
    assert set(np.unique(batch['image'])) == {0, 1}
    assert not batch['label'].any()
    for e in all_examples('binarized_mnist', 'test', tfds_dir)[:50]:
        np.testing.assert_array_equal(e['image'].reshape(-1), raw[e['id']])


@pytest.mark.integration
def test_mnist_test_labels_match_the_idx_file(make_cfg, tfds_dir, shared_data):
    spec = data.describe(make_cfg('mnist_test'))
    assert (spec.shape, spec.num_levels, spec.num_classes) == ((28, 28, 1), 256, 10)
    assert (spec.num_train, spec.num_eval) == (8000, 2000)
    with gzip.open(SHARED_DATA / 'mnist/t10k-labels-idx1-ubyte.gz') as f:
        idx_labels = np.frombuffer(f.read(), np.uint8, offset=8)
    for split, ids in (('train', range(8000)), ('test', range(8000, 10000))):
        examples = all_examples('mnist_test', split, tfds_dir)
        assert sorted(e['id'] for e in examples) == list(ids)
        assert all(e['label'] == idx_labels[e['id']] for e in examples)


def test_tiny_shakespeare_vocab_split_and_round_trip(make_cfg, shared_data):
    text = (SHARED_DATA / 'tinyshakespeare/input.txt').read_text()
    cfg = make_cfg('tiny_shakespeare', text_vocab='chars')
    spec = data.describe(cfg)
    assert spec.num_levels == 65 and spec.vocab == ''.join(sorted(set(text)))
    assert (spec.num_train, spec.num_eval) == (1003854, 1115394 - 1003854)
    assert data.decode_text(data.encode_text(text, spec), spec) == text
    # Eval windows tile the validation text in order, leaving out only the last partial window.
    windows = [b['tokens'][b['mask'] == 1] for b in data.eval_batches(cfg, 64)]
    eval_text = data.decode_text(np.concatenate(windows), spec)
    assert eval_text == text[1003854:][:len(eval_text)]
    assert len(text) - 1003854 - len(eval_text) < spec.shape[0]
    byte_spec = data.describe(make_cfg('tiny_shakespeare', text_vocab='bytes'))
    assert byte_spec.num_levels == 256 and byte_spec.vocab is None
    assert data.decode_text(data.encode_text(text, byte_spec), byte_spec) == text


def test_python_source_hash_is_recorded_stable_and_split_by_file(tmp_path):
    root, paths = text_builders.stdlib_python_files()
    manifest = ''.join(f'{hashlib.sha256((root / p).read_bytes()).hexdigest()}  {p}\n'
                       for p in paths)
    hashes = []
    for attempt in ('first', 'second'):
        builder = catalog.prepared_builder('python_source', None, str(tmp_path / attempt))
        hashes.append(builder.info.metadata['corpus_sha256'])
    assert hashes[0] == hashes[1] == hashlib.sha256(manifest.encode()).hexdigest()
    def keys(split):
        examples = all_examples('python_source', split, tmp_path / 'first', None)
        return {e['key'].decode() for e in examples}

    train, valid = keys('train'), keys('validation')
    assert not train & valid and train | valid == set(paths) and len(valid) > 10
    # The stored text, not just the recorded hash, is the same in both preparations.
    first, second = (sources.split_text('python_source', None, str(tmp_path / at), 'validation')
                     for at in ('first', 'second'))
    assert first == second == b''.join((root / p).read_bytes() for p in sorted(valid))
    assert not any('site-packages' in p for p in paths)


# ---- the catalog path ----

class DulTestCatalogImages(tfds.core.GeneratorBasedBuilder):
    """A stand-in for a catalog image set: PNG images and a label, read from a local .npz file."""

    VERSION = tfds.core.Version('1.0.0')

    def __init__(self, *, npz_path=None, **kwargs):
        self._npz_path = npz_path
        super().__init__(**kwargs)

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(8, 8, 1)),
            'label': tfds.features.ClassLabel(num_classes=10)}))

    def _split_generators(self, dl_manager):
        arrays = np.load(self._npz_path)
        return {'train': self._generate_examples(arrays['images'][:60], arrays['labels'][:60]),
                'test': self._generate_examples(arrays['images'][60:], arrays['labels'][60:])}

    def _generate_examples(self, images, labels):
        for i, (image, label) in enumerate(zip(images, labels, strict=True)):
            png = io.BytesIO()  # encoded with PIL: TFDS would need TensorFlow to encode arrays
            Image.fromarray(image[..., 0]).save(png, format='PNG')
            yield i, {'image': png.getvalue(), 'label': int(label)}


class DulTestUndownloadable(DulTestCatalogImages):
    def _split_generators(self, dl_manager):
        raise ConnectionError('the download server could not be reached')


def test_catalog_path_reads_a_prepared_tfds_data_set(make_cfg, tfds_dir, tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(75, 8, 8, 1), dtype=np.uint8)
    labels = rng.integers(0, 10, size=75)
    np.savez(tmp_path / 'images.npz', images=images, labels=labels)
    DulTestCatalogImages(data_dir=str(tfds_dir), npz_path=tmp_path / 'images.npz',
                         file_format='array_record').download_and_prepare()
    cfg = make_cfg('dul_test_catalog_images')
    spec = data.describe(cfg)
    assert (spec.shape, spec.num_levels, spec.num_classes) == ((8, 8, 1), 256, 10)
    assert (spec.num_train, spec.num_eval, spec.eval_split) == (60, 15, 'test')
    batch = next(data.train_iterator(cfg, 16, seed=0))
    assert batch['image'].shape == (16, 8, 8, 1) and batch['image'].dtype == np.uint8
    batches = list(data.eval_batches(cfg, 4))
    assert len(batches) == 4 and sum(b['mask'].sum() for b in batches) == 15
    seen = np.concatenate([b['image'][b['mask'] == 1] for b in batches])
    seen_labels = np.concatenate([b['label'][b['mask'] == 1] for b in batches])
    assert sorted(map(bytes, seen)) == sorted(map(bytes, images[60:]))
    assert sorted(seen_labels) == sorted(labels[60:])


class DulTestCatalogText(tfds.core.GeneratorBasedBuilder):
    """A stand-in for a catalog text set (like TFDS's tiny_shakespeare or lm1b): Text features,
    several examples per split, a character ('ü') that only the validation split has."""

    VERSION = tfds.core.Version('1.0.0')
    TEXTS = types.MappingProxyType({
        'train': ('To be, or not to be', 'that is the question', 'Whether tis nobler'),
        'validation': ('in the mind to süffer',),
        'test': ('The slings and arrows', 'of outrageous fortune')})

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            'text': tfds.features.Text(), 'title': tfds.features.Text()}))

    def _split_generators(self, dl_manager):
        return {split: self._generate_examples(texts) for split, texts in self.TEXTS.items()}

    def _generate_examples(self, texts):
        for i, text in enumerate(texts):
            yield i, {'text': text, 'title': f'line {i}'}


def test_catalog_text_set_is_text_with_a_vocab_over_all_splits(make_cfg, tmp_path):
    DulTestCatalogText(data_dir=str(tmp_path), file_format='array_record').download_and_prepare()
    cfg = make_cfg('tfds:dul_test_catalog_text', tfds_dir=str(tmp_path), seq_len=4,
                   text_vocab='chars')
    spec = data.describe(cfg)
    texts = DulTestCatalogText.TEXTS
    assert (spec.kind, spec.train_split, spec.eval_split) == ('text', 'train', 'test')
    assert spec.vocab == ''.join(sorted(set('\n'.join('\n'.join(t) for t in texts.values()))))
    # The 'text' feature (not 'title'), one newline between examples, each example once.
    train = sources.split_text(spec.name, str(SHARED_DATA), str(tmp_path), 'train')
    assert sorted(train.decode().split('\n')) == sorted(texts['train'])
    assert spec.num_train == len(train) and spec.num_eval == len('\n'.join(texts['test']))
    for window in next(data.train_iterator(cfg, 8, seed=0))['tokens']:
        assert data.decode_text(window, spec) in train.decode()
    byte_spec = data.describe(make_cfg('tfds:dul_test_catalog_text', tfds_dir=str(tmp_path),
                                       seq_len=4, text_vocab='bytes'))
    assert byte_spec.num_levels == 256 and byte_spec.vocab is None
    with pytest.raises(UserError, match='data.num_levels=2 applies to image data sets'):
        data.describe(make_cfg('tfds:dul_test_catalog_text', tfds_dir=str(tmp_path), num_levels=2))


class DulTestCatalogDeep(tfds.core.GeneratorBasedBuilder):
    """A stand-in for a 16-bit catalog image set with 3 classes; pixels use only 0..999."""

    VERSION = tfds.core.Version('1.0.0')
    IMAGES = np.random.default_rng(1).integers(0, 1000, size=(40, 4, 4, 1)).astype(np.uint16)

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            'image': tfds.features.Tensor(shape=(4, 4, 1), dtype=np.uint16),
            'label': tfds.features.ClassLabel(num_classes=3)}))

    def _split_generators(self, dl_manager):
        return {'train': self._generate_examples(range(30)),
                'test': self._generate_examples(range(30, 40))}

    def _generate_examples(self, indices):
        for i in indices:
            yield i, {'image': self.IMAGES[i], 'label': i % 3}


def test_catalog_levels_come_from_the_dtype_unless_overridden(make_cfg, tmp_path):
    DulTestCatalogDeep(data_dir=str(tmp_path), file_format='array_record').download_and_prepare()
    def cfg(num_levels):
        return make_cfg('tfds:dul_test_catalog_deep', tfds_dir=str(tmp_path),
                        num_levels=num_levels)

    spec = data.describe(cfg(0))
    assert (spec.shape, spec.num_levels, spec.num_classes) == ((4, 4, 1), 65536, 3)
    batches = list(data.eval_batches(cfg(0), 16))
    seen = np.concatenate([b['image'][b['mask'] == 1] for b in batches])
    assert seen.dtype == np.uint16  # 16-bit values are not cut to 8 bits
    assert sorted(map(bytes, seen)) == sorted(map(bytes, DulTestCatalogDeep.IMAGES[30:]))
    assert data.describe(cfg(1000)).num_levels == 1000
    assert len(take(data.train_iterator(cfg(1000), 8, seed=0), 5)) == 5
    # Fewer levels than the pixels use would make nonsense targets: the first batch stops the run.
    assert data.describe(cfg(500)).num_levels == 500
    with pytest.raises(UserError, match=r'has pixel value \d+, but data.num_levels=500'):
        next(data.train_iterator(cfg(500), 8, seed=0))
    with pytest.raises(UserError, match='more than the 65536 values of the uint16 images'):
        data.describe(cfg(70000))
    with pytest.raises(UserError, match='data.num_levels=1 is not 0'):
        data.describe(cfg(1))


def test_tfds_prefix_always_means_the_catalog(make_cfg, tfds_dir, tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / 'images.npz', images=rng.integers(0, 256, (75, 8, 8, 1), dtype=np.uint8),
             labels=rng.integers(0, 10, size=75))
    DulTestCatalogImages(data_dir=str(tmp_path / 'tfds'), npz_path=tmp_path / 'images.npz',
                         file_format='array_record').download_and_prepare()
    plain, prefixed = (data.describe(make_cfg(name, tfds_dir=str(tmp_path / 'tfds')))
                       for name in ('dul_test_catalog_images', 'tfds:dul_test_catalog_images'))
    assert prefixed == dataclasses.replace(plain, name='tfds:dul_test_catalog_images')
    # The local name shadows the catalog's builder; the prefix reaches the catalog (which here
    # cannot download), the plain name our builder.
    monkeypatch.setattr(catalog, 'internet_reachable', lambda: False)
    with pytest.raises(UserError, match="'binarized_mnist' is not prepared under .* could not be "):
        data.describe(make_cfg('tfds:binarized_mnist', tfds_dir=str(tmp_path / 'tfds')))
    with pytest.raises(UserError, match=r"data.name 'tfds:' names no data set"):
        data.describe(make_cfg('tfds:'))


def test_unprepared_catalog_name_offline_is_a_user_error(make_cfg, monkeypatch):
    monkeypatch.setattr(catalog, 'internet_reachable', lambda: False)
    with pytest.raises(UserError, match="'mnist' is not prepared under .* could not be downloaded"):
        data.describe(make_cfg('mnist'))


def test_failed_download_is_a_user_error(make_cfg, monkeypatch):
    monkeypatch.setattr(catalog, 'internet_reachable', lambda: True)
    with pytest.raises(UserError, match='could not be downloaded .*ConnectionError'):
        data.describe(make_cfg('dul_test_undownloadable'))


def test_first_use_does_not_pass_on_tfds_unprepared_warning(make_cfg, tmp_path, caplog):
    """TFDS logs 'Variant folder ... has no dataset_info.json' whenever it checks a data set that is
    not prepared yet: on first use that is expected, so the user must not see it."""
    caplog.set_level(logging.INFO)
    absl_filters = list(logging.getLogger('absl').filters)
    spec = data.describe(make_cfg('digits', tfds_dir=str(tmp_path / 'tfds')))
    assert (spec.num_train, spec.num_eval) == (1500, 297)
    assert 'dataset_info.json' not in caplog.text
    assert logging.getLogger('absl').filters == absl_filters   # nothing left installed
    # Outside our call TFDS still logs it, and this test would see it: the filter is that narrow.
    catalog.LOCAL_BUILDERS['digits'](data_dir=str(tmp_path / 'other')).is_prepared()
    assert 'Variant folder' in caplog.text and 'has no dataset_info.json' in caplog.text


def test_unknown_name_lists_the_local_data_sets(make_cfg):
    with pytest.raises(UserError, match='binarized_mnist, digits, mnist_test, python_source'):
        data.describe(make_cfg('no_such_data_set_anywhere'))


def test_bad_text_settings_are_user_errors(make_cfg):
    with pytest.raises(UserError, match='--config.data.text_vocab'):
        data.describe(make_cfg('python_source', text_vocab='words'))
    with pytest.raises(UserError, match='--config.data.seq_len'):
        data.describe(make_cfg('python_source', seq_len=10**9))


# ---- pipelines ----

class IndexReader:
    """Stands in for a split whose example i is just the number i, to check which indices flow."""

    def __init__(self, size):
        self.size = size

    def __len__(self):
        return self.size

    def read(self, indices):
        return {'index': np.asarray(indices)}


def test_processes_split_each_global_batch_and_epochs_reshuffle(make_cfg, monkeypatch):
    n, processes, batch_size = 103, 3, 5
    monkeypatch.setattr(pipeline, 'split_reader', lambda *args, **kwargs: IndexReader(n))
    num_batches = 2 * n // (batch_size * processes) + 1
    single = np.concatenate([b['index'] for b in take(
        data.train_iterator(make_cfg('digits'), batch_size * processes, 7), num_batches)])
    parts = [[b['index'] for b in take(
        data.train_iterator(make_cfg('digits'), batch_size, 7, p, processes), num_batches)]
        for p in range(processes)]
    # process p holds rows [p*b, (p+1)*b) of every global batch: together, the 1-process stream
    joined = np.concatenate([np.concatenate([parts[p][k] for p in range(processes)])
                             for k in range(num_batches)])
    np.testing.assert_array_equal(joined, single)
    first, second = single[:n], single[n:2 * n]
    assert sorted(first) == sorted(second) == list(range(n))  # each epoch covers the data once
    assert list(first) != list(second)                          # in a new order


def test_eval_batches_show_each_example_exactly_once(make_cfg, monkeypatch):
    n, processes, batch_size = 103, 3, 8
    monkeypatch.setattr(pipeline, 'split_reader', lambda *args, **kwargs: IndexReader(n))
    for max_examples, expected in ((None, n), (50, 50)):
        seen, parts = [], []
        for p in range(processes):
            batches = list(data.eval_batches(make_cfg('digits'), batch_size, max_examples,
                                             process_index=p, process_count=processes))
            parts.append(batches)
            assert all(b['index'].shape == b['mask'].shape == (batch_size,) for b in batches)
            seen += [int(i) for b in batches for i in b['index'][b['mask'] == 1]]
        assert len({len(b) for b in parts}) == 1 and sorted(seen) == list(range(expected))
        # process p holds rows [p*b, (p+1)*b) of every global batch: together, the global
        # batches of one process, padding and all, so eval metrics do not depend on the count
        single = list(data.eval_batches(make_cfg('digits'), batch_size * processes,
                                        max_examples))
        for k, whole in enumerate(single):
            for key in ('index', 'mask'):
                np.testing.assert_array_equal(
                    np.concatenate([parts[p][k][key] for p in range(processes)]), whole[key])


def test_eval_mask_sums_to_the_split_size_on_real_data(make_cfg):
    cfg = make_cfg('digits')
    batches = [list(data.eval_batches(cfg, 64, process_index=p, process_count=2)) for p in (0, 1)]
    assert len(batches[0]) == len(batches[1]) == 3
    assert sum(b['mask'].sum() for shard in batches for b in shard) == 297
    assert all(b['image'].shape == (64, 8, 8, 1) and b['mask'].dtype == np.float32
               for shard in batches for b in shard)


def test_train_iterator_is_deterministic_per_seed(make_cfg):
    cfg = make_cfg('digits')
    a = take(data.train_iterator(cfg, 32, seed=1), 3)
    assert_batches_equal(a, take(data.train_iterator(cfg, 32, seed=1), 3))
    b = take(data.train_iterator(cfg, 32, seed=2), 3)
    assert not np.array_equal(a[0]['image'], b[0]['image'])
    assert a[0]['image'].shape == (32, 8, 8, 1) and a[0]['label'].dtype == np.int32


def test_text_training_windows_start_anywhere_in_the_train_split(make_cfg, tfds_dir):
    cfg = make_cfg('python_source', seq_len=16)
    spec = data.describe(cfg)
    train_text = b''.join(e['text'] for e in sorted(
        all_examples('python_source', 'train', tfds_dir), key=lambda e: e['key']))
    windows = np.concatenate([b['tokens'] for b in take(data.train_iterator(cfg, 64, 0), 4)])
    assert windows.shape == (256, 16) and windows.dtype == np.int32
    starts = [train_text.find(bytes(w.astype(np.uint8))) for w in windows]
    assert all(s >= 0 for s in starts) and any(s % 16 for s in starts)
    assert spec.num_train == len(train_text)


@pytest.mark.parametrize('name', ['digits', 'python_source'])
def test_set_state_resumes_exactly_where_the_iterator_was(make_cfg, name):
    # 30 digits batches of 64 cross the 1,500-example epoch boundary.
    cfg = make_cfg(name)
    uninterrupted = data.train_iterator(cfg, 64, seed=3)
    take(uninterrupted, 30)
    state = uninterrupted.get_state()
    expected = take(uninterrupted, 3)
    resumed = data.train_iterator(cfg, 64, seed=3)
    resumed.set_state(state)
    assert_batches_equal(expected, take(resumed, 3))


def test_iterator_round_trips_through_an_orbax_checkpoint(make_cfg, tmp_path):
    import orbax.checkpoint as ocp
    cfg = make_cfg('digits')
    iterator = data.train_iterator(cfg, 16, seed=0)
    take(iterator, 5)
    with ocp.CheckpointManager(tmp_path / 'ckpt') as manager:
        manager.save(5, args=ocp.args.Composite(
            state=ocp.args.StandardSave({'w': np.arange(3.0)}),
            data_iterator=grain.checkpoint.CheckpointSave(iterator)))
        manager.wait_until_finished()
    expected = take(iterator, 3)
    resumed = data.train_iterator(cfg, 16, seed=0)
    with ocp.CheckpointManager(tmp_path / 'ckpt') as manager:
        restored = manager.restore(manager.latest_step(), args=ocp.args.Composite(
            state=ocp.args.StandardRestore({'w': np.zeros(3)}),
            data_iterator=grain.checkpoint.CheckpointRestore(resumed)))
    np.testing.assert_array_equal(restored.state['w'], np.arange(3.0))
    assert_batches_equal(expected, take(resumed, 3))


def test_decode_text_with_bytes_replaces_invalid_utf8():
    spec = data.DataSpec('t', 'text', (4,), 256, 0, None, 'train', 'validation', 4, 4)
    assert data.decode_text(np.array([104, 105, 0xFF, 33]), spec) == 'hi\ufffd!'


def test_synthetic_data_has_the_stated_shape_and_each_example_is_a_function_of_its_index():
    text = ml_collections.ConfigDict({'name': 'synthetic', 'seq_len': 32, 'synthetic_vocab': 50})
    spec = data.describe(text)
    assert (spec.kind, spec.shape, spec.num_levels) == ('text', (32,), 50)
    images = ml_collections.ConfigDict({'name': 'synthetic', 'synthetic_shape': (6, 5, 3),
                                        'synthetic_levels': 4, 'synthetic_classes': 10})
    image_spec = data.describe(images)
    assert (image_spec.kind, image_spec.shape, image_spec.num_classes) == ('image', (6, 5, 3), 10)
    reader = sources.split_reader(images, image_spec, 'train', training=True)
    batch = reader.read(np.array([7, 3]))
    assert batch['image'].shape == (2, 6, 5, 3) and batch['image'].dtype == np.uint8
    assert batch['image'].max() < 4 and batch['label'].max() < 10
    np.testing.assert_array_equal(reader.read(np.array([3]))['image'][0], batch['image'][1])
    other = sources.split_reader(images, image_spec, 'test', training=False)
    assert not np.array_equal(other.read(np.array([3]))['image'], reader.read([3])['image'])
    batches = pipeline.train_iterator(text, 4, seed=0)
    assert next(batches)['tokens'].shape == (4, 32)
    for bad, match in (({'synthetic_shape': (6, 5)}, 'not an image shape'),
                       ({'synthetic_shape': (6, 5, 3), 'synthetic_levels': 1}, 'between 2'),
                       ({'synthetic_vocab': 1}, 'synthetic_vocab >= 2')):
        with pytest.raises(UserError, match=match):
            data.describe(ml_collections.ConfigDict({**text.to_dict(), **bad}))
