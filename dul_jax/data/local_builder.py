"""The base of our TFDS builders: corpora read from raw files in data.dir, which are fetched
(outside TFDS, see download.py) when missing."""

import hashlib
import pathlib

import tensorflow_datasets as tfds

from dul_jax.data import download
from dul_jax.errors import UserError


class LocalBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Reads REQUIRED_FILES (relative to `source_dir`, i.e. data.dir) when preparing, fetching any
    that is missing from `data_url` (a mirror's base URL; '' = the canonical URLs); reading a
    prepared copy needs neither."""

    VERSION = tfds.core.Version('1.0.0')
    LOCAL_NAME = ''         # the data.name users write
    REQUIRED_FILES = ()     # paths relative to data.dir

    def __init__(self, *, source_dir=None, data_url='', **kwargs):
        self._source_dir = source_dir
        self._data_url = data_url
        self._verified_paths = None
        super().__init__(**kwargs)

    def source_paths(self):
        """Absolute paths of REQUIRED_FILES, each fetched if missing and checked by sha256 (once per
        builder: preparing asks again), or a UserError saying which one is unavailable."""
        if not self.REQUIRED_FILES:
            return []
        if self._source_dir is None:
            raise UserError(f"data set '{self.LOCAL_NAME}' is not prepared and no source folder "
                            f"was given; set --config.data.dir to the folder with its raw files.")
        if self._verified_paths is None:
            root = pathlib.Path(self._source_dir).expanduser().resolve()
            self._verified_paths = download.ensure_files(self.LOCAL_NAME, root, self._data_url)
        return self._verified_paths

    def record_source_hashes(self):
        """Records each raw file's sha256, so a prepared copy can be traced to its exact inputs."""
        paths = self.source_paths()
        self.info.metadata['source_sha256'] = {
            rel: sha256_of_file(path) for rel, path in zip(self.REQUIRED_FILES, paths, strict=True)}
        return paths


def sha256_of_file(path):
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()
