"""Fetching the local data sets' raw files: from a real HTTP server on 127.0.0.1 that serves
../shared/data (or a doctored copy), into an empty data.dir, verified by sha256."""

import functools
import gzip
import hashlib
import http.server
import os
import pathlib
import shutil
import stat
import threading

import ml_collections
import numpy as np
import pytest
import scipy.io
from conftest import free_port, raw_data_folder

from dul_jax import config, data
from dul_jax.data import catalog, download, image_builders
from dul_jax.data.image_builders import DulBinarizedMnist, read_amat
from dul_jax.errors import UserError

TFDS_CHECKSUMS = pathlib.Path(__import__('tensorflow_datasets').__file__).parent / 'datasets'
SHAKESPEARE = download.RAW_FILES['tiny_shakespeare'][0]


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # one line per request would flood the test output
        pass


@pytest.fixture
def serve():
    """serve(folder) -> the base URL of an HTTP server on 127.0.0.1 serving `folder`."""
    servers = []

    def start(folder):
        handler = functools.partial(QuietHandler, directory=str(folder))
        server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
        # A short poll interval, so shutting the server down at the end takes no half second.
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        servers.append(server)
        return f'http://127.0.0.1:{server.server_address[1]}'

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def make_cfg(tmp_path, name, **overrides):
    """An empty data.dir and a fresh tfds_dir, so the data set must be fetched and prepared."""
    cfg = ml_collections.ConfigDict({
        'name': name, 'dir': str(tmp_path / 'data'), 'tfds_dir': str(tmp_path / 'tfds'),
        'url': '', 'seq_len': 32, 'text_vocab': 'bytes', 'num_levels': 0})
    cfg.update(overrides)
    return cfg


def sha256(path):
    return hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()


def files_under(folder):
    return sorted(p.relative_to(folder).as_posix() for p in pathlib.Path(folder).rglob('*')
                  if p.is_file())


@pytest.mark.integration
def test_missing_files_are_fetched_from_data_url_then_prepared(tmp_path, serve, shared_data):
    base = serve(shared_data)
    spec = data.describe(make_cfg(tmp_path, 'tiny_shakespeare', url=base))
    assert (spec.kind, spec.num_train, spec.num_eval) == ('text', 1003854, 1115394 - 1003854)
    assert sha256(tmp_path / 'data' / SHAKESPEARE.path) == SHAKESPEARE.sha256[0]
    spec = data.describe(make_cfg(tmp_path, 'mnist_test', url=base + '/'))  # a trailing / is fine
    assert (spec.shape, spec.num_levels, spec.num_classes) == ((28, 28, 1), 256, 10)
    assert (spec.num_train, spec.num_eval) == (8000, 2000)
    # Byte-for-byte the served files, and no temporary file left beside them.
    assert files_under(tmp_path / 'data') == sorted(download.required_files('mnist_test')
                                                    + download.required_files('tiny_shakespeare'))
    for rel in files_under(tmp_path / 'data'):
        assert sha256(tmp_path / 'data' / rel) == sha256(pathlib.Path(shared_data) / rel)


@pytest.mark.integration
def test_the_environment_variable_is_the_url_when_data_url_is_empty(tmp_path, serve, shared_data,
                                                                     monkeypatch):
    monkeypatch.setenv(download.URL_VARIABLE, serve(shared_data))
    assert data.describe(make_cfg(tmp_path / 'env', 'tiny_shakespeare')).num_train == 1003854
    # data.url wins over the variable: a dead variable does not matter when the key is set.
    monkeypatch.setenv(download.URL_VARIABLE, f'http://127.0.0.1:{free_port()}')
    cfg = make_cfg(tmp_path / 'key', 'tiny_shakespeare', url=serve(shared_data))
    assert data.describe(cfg).num_train == 1003854


@pytest.mark.integration
def test_a_changed_byte_is_refused_and_nothing_is_kept(tmp_path, serve, shared_data):
    served = tmp_path / 'served' / SHAKESPEARE.path
    served.parent.mkdir(parents=True)
    text = bytearray((pathlib.Path(shared_data) / SHAKESPEARE.path).read_bytes())
    text[500_000] ^= 1
    served.write_bytes(bytes(text))
    base = serve(tmp_path / 'served')
    with pytest.raises(UserError) as e:
        data.describe(make_cfg(tmp_path, 'tiny_shakespeare', url=base))
    message = str(e.value)
    assert f'{base}/{SHAKESPEARE.path}' in message and SHAKESPEARE.sha256[0] in message
    assert hashlib.sha256(bytes(text)).hexdigest() in message and '\n' not in message
    assert not (tmp_path / 'data').exists()  # no file, no folder left behind


@pytest.mark.integration
def test_an_unreachable_server_names_the_url_and_the_folder(tmp_path, serve, shared_data):
    base = f'http://127.0.0.1:{free_port()}'
    with pytest.raises(UserError) as e:
        data.describe(make_cfg(tmp_path, 'mnist_test', url=base))
    message = str(e.value)
    folder = tmp_path / 'data' / 'mnist'
    assert f'could not download {base}/mnist/t10k-images-idx3-ubyte.gz' in message
    assert f'put the file into {folder}/' in message
    assert '--config.data.dir' in message and '--config.data.url' in message
    assert message.count('. ') == 0 and '\n' not in message  # one sentence
    assert not (tmp_path / 'data').exists()  # no file, no folder left behind
    # A server that is up but lacks the file: the HTTP status, same advice.
    with pytest.raises(UserError, match=r'could not download .*/tinyshakespeare/input.txt '
                                        r'\(HTTP Error 404: File not found\); put the file'):
        data.describe(make_cfg(tmp_path, 'tiny_shakespeare', url=serve(tmp_path / 'empty')))


def test_a_clone_without_the_shared_folder_fetches_the_test_data_or_says_how(
        tmp_path, serve, shared_data, monkeypatch):
    # a mirror (here, a server on 127.0.0.1 serving the shared files): every file fetched and
    # checked into the cache, and a second call fetches nothing
    monkeypatch.delenv('DUL_JAX_DATA_DIR', raising=False)
    monkeypatch.setenv(download.URL_VARIABLE, serve(shared_data))
    absent, cache = tmp_path / 'no_shared_folder', tmp_path / 'cache'
    assert raw_data_folder(absent, cache) == (str(cache), '')
    for raw in (raw for files in download.RAW_FILES.values() for raw in files):
        assert sha256(cache / raw.path) == sha256(pathlib.Path(shared_data) / raw.path)
    monkeypatch.setenv(download.URL_VARIABLE, f'http://127.0.0.1:{free_port()}')  # now down
    assert raw_data_folder(absent, cache) == (str(cache), '')
    # offline with nothing cached: the reason, and how to provide the files
    folder, why = raw_data_folder(absent, tmp_path / 'empty_cache')
    assert folder is None
    assert why.startswith('the raw data files are not here and could not be fetched (could not '
                          'download http://127.0.0.1:')
    assert why.endswith('set DUL_JAX_DATA_DIR to a folder holding them (layout: docs/data.md) '
                        'or DUL_JAX_DATA_URL to a mirror of that layout, and rerun')
    # a folder of the user's own, named by DUL_JAX_DATA_DIR, is used as it is
    monkeypatch.setenv('DUL_JAX_DATA_DIR', str(cache))
    assert raw_data_folder(absent, tmp_path / 'unused') == (str(cache), '')


def test_present_files_are_verified_too(tmp_path):
    (tmp_path / 'data' / 'tinyshakespeare').mkdir(parents=True)
    (tmp_path / 'data' / SHAKESPEARE.path).write_text('To be, or not to be\n' * 1000)
    with pytest.raises(UserError, match=r'input.txt has sha256 [0-9a-f]{64}, not the expected '
                                        r'86c4e6aa.*; delete it to download it again'):
        data.describe(make_cfg(tmp_path, 'tiny_shakespeare'))


@pytest.mark.integration
def test_gzip_files_are_checked_by_their_content(tmp_path, serve, shared_data):
    """Mirrors recompress: any gzip of the right bytes is accepted, a non-gzip file is not."""
    images = download.RAW_FILES['mnist_test'][0]
    content = gzip.decompress((pathlib.Path(shared_data) / images.path).read_bytes())
    served = tmp_path / 'served' / images.path
    served.parent.mkdir(parents=True)
    served.write_bytes(gzip.compress(content, compresslevel=1, mtime=12345))
    assert sha256(served) != sha256(pathlib.Path(shared_data) / images.path)
    destination = tmp_path / 'data' / images.path
    download.fetch(images, destination, f'{serve(tmp_path / "served")}/{images.path}')
    assert destination.read_bytes() == served.read_bytes()
    served.write_bytes(content)  # not compressed at all
    destination.unlink()
    with pytest.raises(UserError, match='is not a valid gzip file .*so it was not kept'):
        download.fetch(images, destination, f'{serve(tmp_path / "served")}/{images.path}')
    assert files_under(tmp_path / 'data') == []


@pytest.mark.integration
def test_fetched_and_prepared_files_are_readable_by_all_whatever_the_umask(tmp_path, serve,
                                                                          shared_data):
    """A lab shares data.dir and tfds_dir: mkstemp's 0600 (or a private umask) must not stick."""
    old_umask = os.umask(0o077)
    try:
        cfg = make_cfg(tmp_path, 'tiny_shakespeare', url=serve(shared_data),
                       text_store='array_record')
        data.describe(cfg)
    finally:
        os.umask(old_umask)
    raw = tmp_path / 'data' / SHAKESPEARE.path
    assert stat.S_IMODE(raw.stat().st_mode) == 0o644
    assert stat.S_IMODE(raw.parent.stat().st_mode) == 0o755   # the folders made for it
    assert stat.S_IMODE((tmp_path / 'data').stat().st_mode) == 0o755
    prepared = pathlib.Path(catalog.prepared_builder('tiny_shakespeare', cfg.dir,
                                                     cfg.tfds_dir).data_dir)
    assert stat.S_IMODE(prepared.stat().st_mode) == 0o755
    files = sorted(p.name for p in prepared.iterdir())
    assert 'dataset_info.json' in files and 'tokens-train-bytes.array_record' in files
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in prepared.iterdir()} \
        == {name: 0o644 for name in files}


def test_a_malformed_data_url_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match=r"data.url 'ftp.example.org/data' is not an http"):
        data.describe(make_cfg(tmp_path, 'tiny_shakespeare', url='ftp.example.org/data'))


def test_the_table_matches_the_builders_tfds_and_the_shared_files(shared_data):
    for name, files in download.RAW_FILES.items():
        assert catalog.LOCAL_BUILDERS[name].REQUIRED_FILES == tuple(f.path for f in files)
        for raw in files:  # each shared copy is one of the accepted versions
            assert download.content_sha256(pathlib.Path(shared_data) / raw.path, raw.gzipped) \
                in raw.sha256
    assert {name for name, cls in catalog.LOCAL_BUILDERS.items() if cls.REQUIRED_FILES} \
        == set(download.RAW_FILES)
    # TFDS's own checksums for the same URLs are among the accepted values.
    for folder, name in (('binarized_mnist', 'binarized_mnist'),
                         ('tiny_shakespeare', 'tiny_shakespeare')):
        tfds_sums = dict(line.split('\t')[::2] for line in
                         (TFDS_CHECKSUMS / folder / 'checksums.tsv').read_text().splitlines())
        assert {raw.url: raw.sha256[0] for raw in download.RAW_FILES[name]} == tfds_sums


def test_new_config_keys_are_in_the_base_config():
    cfg = config.base_config()
    assert cfg.data.url == '' and cfg.data.num_levels == 0


# ---- binarized MNIST in Larochelle's text format ----

def larochelle_text(pixels):
    """Larochelle's .amat layout: per image one line of 784 '0'/'1' separated by single spaces."""
    chars = np.full((len(pixels), 2 * 784), ord(' '), dtype=np.uint8)
    chars[:, 0::2] = pixels + ord('0')
    chars[:, -1] = ord('\n')
    return chars.tobytes()


def test_binarized_mnist_text_files_give_the_same_images(tmp_path, shared_data):
    text_dir = tmp_path / 'text'
    (text_dir / 'binarized_mnist').mkdir(parents=True)
    matlab = {}
    for raw in download.RAW_FILES['binarized_mnist']:
        matlab[raw.path] = scipy.io.loadmat(pathlib.Path(shared_data) / raw.path)['X']
        (text_dir / raw.path).write_bytes(larochelle_text(matlab[raw.path]))
        # The same bytes TFDS downloads from Larochelle's site: the layout is exactly his.
        assert sha256(text_dir / raw.path) == raw.sha256[0]
    builder = DulBinarizedMnist(data_dir=str(tmp_path / 'tfds'), source_dir=str(text_dir))
    generators = builder._split_generators(dl_manager=None)
    for split, raw in zip(DulBinarizedMnist.SPLITS, download.RAW_FILES['binarized_mnist'],
                          strict=True):
        examples = [example for _, example in generators[split]]
        images = np.stack([e['image'] for e in examples])
        assert images.dtype == np.uint8 and images.shape == (len(matlab[raw.path]), 28, 28, 1)
        np.testing.assert_array_equal(images.reshape(len(images), -1), matlab[raw.path])
        assert [e['id'] for e in examples] == list(range(len(images)))


def test_malformed_text_amat_is_refused(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 2, size=(3, 784), dtype=np.uint8)
    good = larochelle_text(pixels)
    path = tmp_path / 'x.amat'
    path.write_bytes(good.replace(b'\n', b' \r\n'))  # other whitespace is fine
    np.testing.assert_array_equal(read_amat(path), pixels)
    path.write_bytes(good.replace(b' ', b'\t', 1))   # not the published layout, still fine
    np.testing.assert_array_equal(read_amat(path), pixels)
    moved = bytearray(good)
    moved[2 * 784 - 3], moved[2 * 784 - 1] = ord('\n'), ord(' ')   # line 1's last value to line 2
    for bad in (good.replace(b'1', b'2', 1),           # a value that is not 0 or 1
                good[:-3] + b'\n',                      # a line one value short
                good.replace(b'0 ', b'00 ', 1),         # a two-digit value
                bytes(moved),                           # the published size, 783 + 785 values
                good.replace(b' ', b'x', 1),            # not whitespace between values
                b''):
        path.write_bytes(bad)
        with pytest.raises(UserError, match='neither a MATLAB file nor text lines of 784'):
            image_builders.read_amat(path)


def test_shared_copy_is_read_as_matlab(shared_data):
    raw = download.RAW_FILES['binarized_mnist'][2]
    path = pathlib.Path(shared_data) / raw.path
    assert path.read_bytes().startswith(image_builders.MATLAB_HEADER)
    np.testing.assert_array_equal(read_amat(path), scipy.io.loadmat(path)['X'])


@pytest.mark.integration
def test_copying_a_prepared_tree_needs_no_source(tmp_path, serve, shared_data):
    """Once prepared, the raw files are not needed: a run elsewhere reads the tfds_dir alone."""
    cfg = make_cfg(tmp_path, 'tiny_shakespeare', url=serve(shared_data))
    expected = data.describe(cfg)
    shutil.rmtree(tmp_path / 'data')
    moved = make_cfg(tmp_path, 'tiny_shakespeare', url=f'http://127.0.0.1:{free_port()}')
    assert data.describe(moved) == expected
