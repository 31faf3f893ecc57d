"""TFDS builders for the local text corpora (raw files in data.dir, fetched when missing).

Each example is {'key': str, 'text': raw UTF-8 bytes}. A split's text is its examples sorted by
'key' and concatenated; TFDS stores examples in a hashed order, so the key restores the order.
"""

import hashlib
import os
import pathlib
import sys
import sysconfig

import numpy as np
import tensorflow_datasets as tfds

from dul_jax.data.download import required_files
from dul_jax.data.local_builder import LocalBuilder
from dul_jax.errors import UserError


class _LocalTextBuilder(LocalBuilder, skip_registration=True):
    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            description=self.__doc__,
            features=tfds.features.FeaturesDict({
                'key': tfds.features.Text(),
                'text': tfds.features.Tensor(shape=(), dtype=np.object_),
            }),
            metadata=tfds.core.MetadataDict(),
        )

    def _generate_examples(self, keyed_texts):
        for key, text in keyed_texts:
            yield key, {'key': key, 'text': text}


class DulTinyShakespeare(_LocalTextBuilder):
    """Tiny Shakespeare (1,115,394 characters): the first 90% of characters train, the rest
    validation (the split the reference numbers use)."""

    LOCAL_NAME = 'tiny_shakespeare'
    REQUIRED_FILES = required_files(LOCAL_NAME)

    def _split_generators(self, dl_manager):
        (path,) = self.record_source_hashes()
        try:
            text = path.read_bytes().decode('utf-8')
        except UnicodeDecodeError:
            raise UserError(f'{path} is not UTF-8 text; set --config.data.dir to the folder '
                            f'with the original tinyshakespeare/input.txt.') from None
        # The split the reference numbers use: by characters, train = text[:int(0.9 * len)].
        n_train = int(0.9 * len(text))
        self.info.metadata['split_rule'] = f'first int(0.9 * {len(text)}) characters train'
        return {
            'train': self._generate_examples([('input.txt', text[:n_train].encode('utf-8'))]),
            'validation': self._generate_examples([('input.txt', text[n_train:].encode('utf-8'))]),
        }


def stdlib_python_files():
    """Sorted relative paths of the interpreter's standard library .py files.

    Skips site-packages (installed packages, not the standard library) and test folders (test,
    tests, idle_test): those hold files with deliberately broken encodings and syntax, and would
    more than double the corpus with repetitive test code.
    """
    root = pathlib.Path(sysconfig.get_paths()['stdlib'])
    skipped = {'site-packages', 'dist-packages', 'test', 'tests', 'idle_test', '__pycache__'}
    found = []
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = [d for d in subfolders if d not in skipped]
        rel_folder = pathlib.Path(folder).relative_to(root)
        found += [(rel_folder / f).as_posix() for f in files if f.endswith('.py')]
    return root, sorted(found)


def is_validation_file(relative_path):
    """About 5% of the files, chosen by a hash of the path so the split never depends on order."""
    return int(hashlib.sha256(relative_path.encode()).hexdigest()[:8], 16) % 100 < 5


class DulPythonSource(_LocalTextBuilder):
    """The bytes of the running interpreter's standard library .py files, split by file (95/5)."""

    LOCAL_NAME = 'python_source'

    def _split_generators(self, dl_manager):
        root, relative_paths = stdlib_python_files()
        texts = {rel: (root / rel).read_bytes() for rel in relative_paths}
        # The corpus hash is sha256 of a `sha256sum`-style manifest ("<sha256>  <path>\n" per file,
        # sorted by path), so anyone can recompute it with standard tools.
        manifest = ''.join(f'{hashlib.sha256(texts[rel]).hexdigest()}  {rel}\n'
                           for rel in relative_paths)
        validation = [rel for rel in relative_paths if is_validation_file(rel)]
        self.info.metadata.update({
            'corpus_sha256': hashlib.sha256(manifest.encode()).hexdigest(),
            'num_files': len(relative_paths),
            'num_bytes': sum(len(t) for t in texts.values()),
            'num_validation_files': len(validation),
            'python_version': sys.version.split()[0],
            'stdlib': str(root),
            'split_rule': 'validation if int(sha256(path)[:8], 16) % 100 < 5',
        })
        train = [(rel, texts[rel]) for rel in relative_paths if not is_validation_file(rel)]
        return {
            'train': self._generate_examples(train),
            'validation': self._generate_examples([(rel, texts[rel]) for rel in validation]),
        }
