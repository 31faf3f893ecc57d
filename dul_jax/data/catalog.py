"""Finding a prepared TFDS builder for a data set name: our local builders, else the catalog."""

import functools
import os
import shutil
import socket

import tensorflow_datasets as tfds
from etils import epath

from dul_jax import storage
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


@functools.cache
def prepared_builder(name, source_dir, tfds_dir, data_url=''):
    """A builder whose files exist under `tfds_dir`; a local data set is prepared on first use, its
    missing raw files fetched from `data_url` (a mirror; '' = their canonical URLs)."""
    if storage.is_url(tfds_dir):
        return _prepared_at_url(name, source_dir, tfds_dir, data_url)
    builder = _builder(name, source_dir, tfds_dir, data_url)
    if name not in LOCAL_BUILDERS:
        return _prepared_catalog_builder(builder, catalog_name(name), tfds_dir)
    if not builder.is_prepared():
        builder.source_paths()  # fetched and verified before TFDS starts writing
        builder.download_and_prepare()
    return builder


def _builder(name, source_dir, tfds_dir, data_url):
    """The builder of `name` over `tfds_dir`, prepared or not."""
    if name in LOCAL_BUILDERS:
        return LOCAL_BUILDERS[name](data_dir=tfds_dir, source_dir=source_dir, data_url=data_url,
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


def catalog_name(name):
    """The TFDS catalog name that data.name `name` stands for (`tfds:NAME` -> NAME)."""
    if not name.startswith(CATALOG_PREFIX):
        return name
    if not name[len(CATALOG_PREFIX):]:
        raise UserError(f"data.name {name!r} names no data set; write {CATALOG_PREFIX}NAME with a "
                        f"TFDS catalog name, e.g. {CATALOG_PREFIX}mnist.")
    return name[len(CATALOG_PREFIX):]


def _catalog_builder(name, tfds_dir):
    try:
        return tfds.builder(name, data_dir=tfds_dir, file_format='array_record')
    except tfds.core.registered.DatasetNotFoundError:
        raise UserError(
            f"data set {name!r} is neither a local data set ({', '.join(sorted(LOCAL_BUILDERS))}) "
            f"nor in the TFDS catalog; set --config.data.name to one of those.") from None
    except ValueError:  # TFDS's own message is a page on the name syntax
        raise UserError(f'data set {name!r} is not a valid TFDS name (NAME[/CONFIG][:VERSION]); '
                        f'set --config.data.name to a name like mnist or {CATALOG_PREFIX}mnist.'
                        ) from None


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


def is_text(name, builder):
    """Our text corpora, or a catalog set with a Text feature and no image."""
    if name in LOCAL_BUILDERS:
        return name in TEXT_DATA_SETS
    return 'image' not in builder.info.features and text_feature(builder) is not None


def data_source(name, split, source_dir, tfds_dir):
    """Random-access source of one split's decoded examples (dicts of numpy arrays)."""
    builder = prepared_builder(name, source_dir, tfds_dir)
    if split not in builder.info.splits:
        raise UserError(f"data set {name!r} has no split {split!r}; use one of "
                        f"{', '.join(sorted(builder.info.splits))}.")
    return builder.as_data_source(split)
