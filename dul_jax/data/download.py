"""Raw files of the local data sets: where each is published, its sha256, fetching a missing one.

A file is fetched into data.dir only when missing, to a temporary name beside its destination, then
verified and renamed, so an interrupted or corrupt download never leaves a file that looks real;
it ends readable by everyone (0644), as do the folders made for it (0755), so that one data.dir
can serve a lab. Files already in data.dir are verified the same way before they are prepared.
"""

import dataclasses
import gzip
import hashlib
import os
import pathlib
import tempfile
import urllib.error
import urllib.parse
import urllib.request

import tqdm

from dul_jax.errors import UserError

URL_VARIABLE = 'DUL_JAX_DATA_URL'   # where data.url is empty: a mirror of data.dir's layout
URL_SCHEMES = ('http', 'https', 'file')
TIMEOUT_S = 60.0                    # per blocking socket operation, not for the whole file


@dataclasses.dataclass(frozen=True)
class RawFile:
    path: str                   # relative to data.dir, and to a mirror's base URL
    url: str                    # the canonical public source
    sha256: tuple[str, ...]     # accepted values, of the decompressed bytes when `gzipped`
    gzipped: bool = False       # mirrors recompress .gz files, so only the content is fixed


_LAROCHELLE = 'http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist/'
_MNIST = 'https://storage.googleapis.com/cvdf-datasets/mnist/'   # TFDS's mirror of LeCun's files
_KARPATHY = 'https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/'


def _binarized(split, text_sha256, matlab_sha256):
    # Accepted: Larochelle's text files (TFDS's checksums) and the MATLAB v5 copies of the same
    # pixels that circulate under the same names.
    return RawFile(f'binarized_mnist/binarized_mnist_{split}.amat',
                   f'{_LAROCHELLE}binarized_mnist_{split}.amat', (text_sha256, matlab_sha256))


# data.name -> its raw files. MNIST's values are the widely published sha256 of the decompressed
# IDX files (LeCun's originals), which any faithful mirror's .gz decompresses to.
RAW_FILES = {
    'binarized_mnist': (
        _binarized('train', 'ad693b29f94c14277b095f5238ddefbbdaaae0939789dd2f4f0205278cee3e4d',
                   '79a0312c7389d855cfc97e3812de3998417c5829d8a51543b56a90a91252ae7e'),
        _binarized('valid', '1de3d397c40fe8eeb33dafd4099a1f665ec01e96d9be234aaeeac8a34930e2e2',
                   '7436afc856959075c7787025bb8a4ba2b520b9230ee39667c66aa7dd2819dd68'),
        _binarized('test', 'e6687bfea3f820c174f33b7865140b2a2dd2930ef786f35d45795fc193b5ab2c',
                   '5bc30222e1e7896cbccd1e1db6b28540cc1230f4d2d5473841a5f6cc54be8d38'),
    ),
    'mnist_test': (
        RawFile('mnist/t10k-images-idx3-ubyte.gz', f'{_MNIST}t10k-images-idx3-ubyte.gz',
                ('0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7',), True),
        RawFile('mnist/t10k-labels-idx1-ubyte.gz', f'{_MNIST}t10k-labels-idx1-ubyte.gz',
                ('ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2',), True),
    ),
    'tiny_shakespeare': (
        RawFile('tinyshakespeare/input.txt', f'{_KARPATHY}input.txt',
                ('86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed',)),
    ),
}


def required_files(name):
    """The relative paths of a local data set's raw files, in RAW_FILES order."""
    return tuple(f.path for f in RAW_FILES[name])


def base_url(configured):
    """data.url, else $DUL_JAX_DATA_URL, else '' (the canonical URLs); a UserError if malformed."""
    url = (configured or os.environ.get(URL_VARIABLE) or '').strip()
    if url and urllib.parse.urlsplit(url).scheme not in URL_SCHEMES:
        raise UserError(f'data.url {url!r} is not an http, https or file URL; set '
                        f'--config.data.url (or ${URL_VARIABLE}) to a mirror like '
                        f'https://example.org/dul_jax_data.')
    return url.rstrip('/')


def source_url(raw, base):
    return f'{base}/{raw.path}' if base else raw.url


def ensure_files(name, root, base=''):
    """The absolute paths of data set `name`'s raw files under `root`, each fetched first if missing
    and each verified by sha256 (a UserError names the file, the expected and the actual value)."""
    root = pathlib.Path(root)
    paths = []
    for raw in RAW_FILES.get(name, ()):
        path = root / raw.path
        if not path.is_file():
            fetch(raw, path, source_url(raw, base))
        else:
            actual = content_sha256(path, raw.gzipped)
            if actual not in raw.sha256:
                raise UserError(f'{path} {_mismatch(raw, actual)}; delete it to download it '
                                f'again.')
        paths.append(path)
    return paths


def fetch(raw, path, url):
    """Downloads `url` to `path` through a verified temporary file in the same folder."""
    folder = path.parent
    created = [d for d in (folder, *folder.parents) if not d.exists()]  # deepest first
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle, temp = tempfile.mkstemp(dir=folder, prefix=f'.{path.name}.', suffix='.part')
    except OSError as e:
        raise UserError(f'cannot write into {folder} ({e.strerror}); set --config.data.dir to a '
                        f'writable folder.') from None
    try:
        with os.fdopen(handle, 'wb') as out:
            _download(url, out, folder)
        actual = content_sha256(temp, raw.gzipped)
        if actual not in raw.sha256:
            raise UserError(f'the file downloaded from {url} {_mismatch(raw, actual)}, so it was '
                            f'not kept; check data.url or try again.')
        os.replace(temp, path)  # atomic: readers see no file or the whole verified file
        share(path, *created)
    finally:
        if os.path.exists(temp):
            os.remove(temp)
        if not path.exists():  # a failed fetch leaves no trace, not even an empty data.dir
            for directory in created:
                try:
                    directory.rmdir()
                except OSError:  # another file or process uses it now
                    break


FILE_MODE, FOLDER_MODE = 0o644, 0o755


def share(*paths):
    """Makes files 0644 and folders 0755 whatever the umask, so that a data.dir or tfds_dir that a
    lab shares is readable by all of it (mkstemp alone leaves 0600, for the owner only)."""
    for p in paths:
        try:
            os.chmod(p, FOLDER_MODE if os.path.isdir(p) else FILE_MODE)
        except PermissionError:   # another user's, e.g. a folder that a parallel fetch made
            pass


def _download(url, out, folder):
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
            size = int(response.headers.get('Content-Length') or 0) or None
            # Drawn on a terminal only (disable=None), so logs and tests get no bar.
            with tqdm.tqdm(total=size, desc=url.rsplit('/', 1)[-1], unit='B', unit_scale=True,
                           unit_divisor=1024, disable=None, leave=False) as bar:
                for block in iter(lambda: response.read(1 << 20), b''):
                    out.write(block)
                    bar.update(len(block))
    except (urllib.error.URLError, OSError) as e:  # HTTP errors, refused, offline, timeouts
        # An HTTPError's own text has the status code; a URLError's reason is the socket error.
        reason = e if isinstance(e, urllib.error.HTTPError) else getattr(e, 'reason', e)
        raise UserError(f'could not download {url} ({reason}); put the file into {folder}/, '
                        f'point --config.data.dir at a folder that has it, or set '
                        f'--config.data.url (or ${URL_VARIABLE}) to a mirror.') from None


def _mismatch(raw, actual):
    expected = ' or '.join(raw.sha256)
    if actual is None:
        return f'is not a valid gzip file (expected decompressed sha256 {expected})'
    kind = 'decompressed sha256' if raw.gzipped else 'sha256'
    return f'has {kind} {actual}, not the expected {expected}'


def content_sha256(path, gzipped=False):
    """sha256 of the file's bytes, or of its decompressed bytes (None for a broken .gz)."""
    digest = hashlib.sha256()
    try:
        with (gzip.open if gzipped else open)(path, 'rb') as f:
            for block in iter(lambda: f.read(1 << 20), b''):
                digest.update(block)
    except (gzip.BadGzipFile, EOFError):
        return None
    return digest.hexdigest()
