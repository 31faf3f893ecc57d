"""What a data.name stands for, resolved once (`entry`): random examples, a toy mixture, an
arrays folder, one of our local TFDS builders, or a TFDS catalog builder, prepared on first use.

sources.py builds the DataSpec and split readers from an Entry; nothing here calls back into it.
"""

import contextlib
import dataclasses
import enum
import functools
import logging
import os
import re
import shutil
import socket
import sys
from typing import Any

import tensorflow_datasets as tfds
from etils import epath

from dul_jax import storage
from dul_jax.data import arrays, download, synthetic, toy
from dul_jax.data.image_builders import DulBinarizedMnist, DulDigits, DulMnistTest
from dul_jax.data.text_builders import DulPythonSource, DulTinyShakespeare
from dul_jax.errors import UserError

# data.name -> builder class. Registered in TFDS under a `dul_` prefix, so that they never clash
# with the catalog's own `binarized_mnist` or `tiny_shakespeare` (different features and splits);
# `tfds:NAME` always names the catalog's builder.
CATALOG_PREFIX = 'tfds:'
LOCAL_BUILDERS = {cls.LOCAL_NAME: cls for cls in
                  (DulDigits, DulBinarizedMnist, DulMnistTest, DulTinyShakespeare, DulPythonSource)}
TEXT_DATA_SETS = {DulTinyShakespeare.LOCAL_NAME, DulPythonSource.LOCAL_NAME}
DEFAULT_TFDS_DIR = '~/.cache/dul_jax/tfds'   # also where data sets for a URL tfds_dir are made


class Origin(enum.Enum):
    """Where the examples of a data.name come from."""
    SYNTHETIC = 'synthetic'   # synthetic.py: random examples of a configured shape
    TOY = 'toy'               # toy.py: a 2-D Gaussian mixture, generated in memory
    ARRAYS = 'arrays'         # arrays.py: a folder of .npz splits that a program wrote
    LOCAL = 'local'           # one of LOCAL_BUILDERS, prepared under tfds_dir from data.dir
    CATALOG = 'catalog'       # a TFDS catalog builder, prepared (downloaded) under tfds_dir


@dataclasses.dataclass(frozen=True, eq=False)   # one per key of `entry`: compared by identity
class Entry:
    """A data.name resolved once: its origin and, for a TFDS set, the prepared builder and what
    it holds. sources.py reads everything it needs from here without resolving the name again."""
    name: str                         # data.name as written (`tfds:NAME` keeps its prefix)
    origin: Origin
    builder: Any = None               # the prepared TFDS builder (LOCAL, CATALOG); else None
    text_feature: str | None = None   # the feature that holds the text of a text set; else None
    levels: int = 0                   # gray levels our image builder states; 0 = not stated

    @property
    def is_text(self) -> bool:
        """Our text corpora, or a catalog set with a Text feature and no image."""
        return self.text_feature is not None

    @property
    def splits(self):
        return self.builder.info.splits

    def source(self, split):
        """Random-access source of one split's decoded examples (dicts of numpy arrays)."""
        return _split_source(self.builder, self.name, split)


_ENTRIES = {}


def entry(name, source_dir, tfds_dir, data_url='') -> Entry:
    """The Entry of data.name `name`, preparing a TFDS set on first use (its missing raw files
    fetched from `data_url`). Kept per (name, source_dir, tfds_dir): a prepared set needs no URL,
    so later look-ups without it get the same Entry."""
    key = (name, source_dir, tfds_dir)
    if key not in _ENTRIES:
        _ENTRIES[key] = _resolve(name, source_dir, tfds_dir, data_url)
    return _ENTRIES[key]


def _resolve(name, source_dir, tfds_dir, data_url):
    if name == synthetic.NAME:
        return Entry(name, Origin.SYNTHETIC)
    if toy.is_toy(name):
        return Entry(name, Origin.TOY)
    if arrays.is_arrays(name):
        return Entry(name, Origin.ARRAYS)
    builder = prepared_builder(name, source_dir, tfds_dir, data_url)
    local = LOCAL_BUILDERS.get(name)
    if local is not None:
        return Entry(name, Origin.LOCAL, builder, 'text' if name in TEXT_DATA_SETS else None,
                     getattr(local, 'NUM_LEVELS', 0))
    feature = None if 'image' in builder.info.features else text_feature(builder)
    return Entry(name, Origin.CATALOG, builder, feature)


@functools.cache
def prepared_builder(name, source_dir, tfds_dir, data_url=''):
    """A builder whose files exist under `tfds_dir`; a local data set is prepared on first use, its
    missing raw files fetched from `data_url` (a mirror; '' = their canonical URLs)."""
    with quiet_unprepared(), _bars_on_terminals_only():
        return _prepared_builder(name, source_dir, tfds_dir, data_url)


@contextlib.contextmanager
def _bars_on_terminals_only():
    """TFDS's preparation progress bars only where stderr is a terminal (in a batch job's log they
    are lines of carriage returns), and TFDS's own setting back afterwards."""
    from tensorflow_datasets.core.utils import tqdm_utils
    saved = tqdm_utils._active   # TFDS keeps the setting here and offers no getter
    tqdm_utils.display_progress_bar(sys.stderr.isatty())
    try:
        yield
    finally:
        tqdm_utils.display_progress_bar(saved)


def _prepared_builder(name, source_dir, tfds_dir, data_url):
    if storage.is_url(tfds_dir):
        return _prepared_at_url(name, source_dir, tfds_dir, data_url)
    builder = _builder(name, source_dir, tfds_dir, data_url)
    if name not in LOCAL_BUILDERS:
        return _prepared_catalog_builder(builder, catalog_name(name), tfds_dir)
    if not builder.is_prepared():
        builder.source_paths()  # fetched and verified before TFDS starts writing
        builder.download_and_prepare()
        folder = os.fspath(builder.data_dir)   # readable by all, like the raw files
        download.share(folder, *(f.path for f in os.scandir(folder)))
    return builder


# TFDS's is_prepared() logs this (absl, WARNING) for every data set not prepared yet, which on
# first use is the normal state, not something for the user to act on.
_UNPREPARED = re.compile(r'Variant folder .* has no dataset_info\.json')


class _DropUnprepared(logging.Filter):
    def filter(self, record):
        # Other records are not formatted here: a malformed one is logging's to report, not ours.
        return not (isinstance(record.msg, str) and record.msg.startswith('Variant folder ')
                    and _UNPREPARED.fullmatch(record.getMessage()))


@contextlib.contextmanager
def quiet_unprepared():
    """Drops only that message, only from the absl logger, and only while the block runs: no
    process-wide verbosity is changed behind the user's back."""
    logger, dropper = logging.getLogger('absl'), _DropUnprepared()
    logger.addFilter(dropper)
    try:
        yield
    finally:
        logger.removeFilter(dropper)


def _builder(name, source_dir, tfds_dir, data_url):
    """The builder of `name` over `tfds_dir`, prepared or not."""
    local = LOCAL_BUILDERS.get(name)
    if local is not None:
        return local(data_dir=tfds_dir, source_dir=source_dir, data_url=data_url,
                     file_format='array_record')
    return _catalog_builder(catalog_name(name), tfds_dir)


def _prepared_at_url(name, source_dir, url, data_url):
    """TFDS without TensorFlow cannot write array_record files to a URL (gs://...): a data set
    missing there is prepared in the local DEFAULT_TFDS_DIR and uploaded, dataset_info.json last
    (TFDS takes a folder without it for unprepared, so a cut upload is redone), then read there."""
    builder = _builder(name, source_dir, url, data_url)
    if builder.is_prepared():
        return builder
    local_dir = os.path.abspath(os.path.expanduser(DEFAULT_TFDS_DIR))
    local = epath.Path(prepared_builder(name, source_dir, local_dir, data_url).data_dir)
    target = storage.path(builder.data_dir)
    target.mkdir(parents=True, exist_ok=True)
    for f in sorted(local.iterdir(), key=lambda f: f.name == 'dataset_info.json'):
        with f.open('rb') as src, (target / f.name).open('wb') as dst:
            shutil.copyfileobj(src, dst, 1 << 24)
    return _builder(name, source_dir, url, data_url)   # a new builder reads the uploaded info


class UnknownDataSet(UserError):
    """data.name names no data set: `dul-jax data prepare` words its advice for its argument."""


def catalog_name(name):
    """The TFDS catalog name that data.name `name` stands for (`tfds:NAME` -> NAME)."""
    if not name.startswith(CATALOG_PREFIX):
        return name
    if not name[len(CATALOG_PREFIX):]:
        raise UnknownDataSet(f"data.name {name!r} names no data set; write {CATALOG_PREFIX}NAME "
                             f"with a TFDS catalog name, e.g. {CATALOG_PREFIX}mnist.")
    return name[len(CATALOG_PREFIX):]


def _catalog_builder(name, tfds_dir):
    try:
        return tfds.builder(name, data_dir=tfds_dir, file_format='array_record')
    except tfds.core.registered.DatasetNotFoundError:
        raise UnknownDataSet(
            f"data set {name!r} is neither a local data set ({', '.join(sorted(LOCAL_BUILDERS))}) "
            f"nor in the TFDS catalog; set --config.data.name to one of those.") from None
    except ValueError:  # TFDS's own message is a page on the name syntax
        raise UnknownDataSet(f'data set {name!r} is not a valid TFDS name '
                             f'(NAME[/CONFIG][:VERSION]); set --config.data.name to a name like '
                             f'mnist or {CATALOG_PREFIX}mnist.') from None


def _prepared_catalog_builder(builder, name, tfds_dir):
    if not builder.is_prepared():
        _download_and_prepare(name, builder, tfds_dir)
    file_format = builder.info.file_format
    if file_format is not None and file_format.value != 'array_record':
        raise UserError(
            f'data set {name!r} is prepared under {tfds_dir} as {file_format.value}, but random '
            f'access needs array_record; run `tfds build {name} --file_format=array_record '
            f'--data_dir={tfds_dir}` once with internet access.')
    return builder


def _download_and_prepare(name, builder, tfds_dir):
    unavailable = (f'data set {name!r} is not prepared under {tfds_dir} and could not be '
                   f'downloaded')
    advice = ('run once with internet access or set --config.data.tfds_dir to where it is '
              'prepared')
    # TFDS retries a failed download for about three minutes; a quick probe fails in a moment.
    if not internet_reachable():
        raise UserError(f'{unavailable} (no internet access); {advice}.')
    try:
        builder.download_and_prepare()
    except Exception as e:  # any failure here means the data set is unavailable to this user
        raise UserError(f'{unavailable} ({type(e).__name__}: {e}); {advice} (preparing most '
                        f'catalog image sets also needs tensorflow installed).') from e


def internet_reachable(host='storage.googleapis.com', port=443, timeout_s=3.0):
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
        return True
    except OSError:
        return False


def text_feature(builder):
    """A catalog builder's text feature: 'text' if it is a tfds Text feature, else the only Text
    feature, else None (not a text data set)."""
    texts = [key for key, feature in builder.info.features.items()
             if isinstance(feature, tfds.features.Text)]
    return 'text' if 'text' in texts else (texts[0] if len(texts) == 1 else None)


def data_source(name, split, source_dir, tfds_dir):
    """Random-access source of one split's decoded examples (dicts of numpy arrays)."""
    return _split_source(prepared_builder(name, source_dir, tfds_dir), name, split)


def _split_source(builder, name, split):
    if split not in builder.info.splits:
        raise UserError(f"data set {name!r} has no split {split!r}; use one of "
                        f"{', '.join(sorted(builder.info.splits))}.")
    return builder.as_data_source(split)
