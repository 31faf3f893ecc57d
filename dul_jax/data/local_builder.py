"""The base of our TFDS builders: corpora read from local files, never downloaded."""

import hashlib
import pathlib

import tensorflow_datasets as tfds

from dul_jax.errors import UserError


class LocalBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Reads REQUIRED_FILES (relative to `source_dir`, i.e. data.dir) when preparing; reading a
    prepared copy needs no source_dir."""

    VERSION = tfds.core.Version('1.0.0')
    LOCAL_NAME = ''         # the data.name users write
    REQUIRED_FILES = ()     # paths relative to data.dir

    def __init__(self, *, source_dir=None, **kwargs):
        self._source_dir = source_dir
        super().__init__(**kwargs)

    def source_paths(self):
        """Absolute paths of REQUIRED_FILES, or a UserError naming the first one that is missing."""
        if not self.REQUIRED_FILES:
            return []
        if self._source_dir is None:
            raise UserError(f"data set '{self.LOCAL_NAME}' is not prepared and no source folder "
                            f"was given; set --config.data.dir to the folder with its raw files.")
        root = pathlib.Path(self._source_dir).expanduser().resolve()
        for rel in self.REQUIRED_FILES:
            if not (root / rel).is_file():
                raise UserError(f"data set '{self.LOCAL_NAME}' needs {root / rel}, which does not "
                                f"exist; set --config.data.dir to the folder that holds "
                                f"{pathlib.PurePath(rel).parent}/.")
        return [root / rel for rel in self.REQUIRED_FILES]

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
