"""The data layer: TFDS builders for local corpora, the TFDS catalog, and grain pipelines.

The trainer needs only `describe`, `train_iterator`, `eval_batches` and `decode_text`. TFDS and
grain are imported on first use of a data set, so importing dul_jax (models, losses, benchmarks
on synthetic batches) does not need them.
"""

from dul_jax.data.spec import DataSpec, Kind, decode_text, encode_text


def describe(data_cfg) -> DataSpec:
    """The DataSpec of the configured data set; prepares a local data set on first use."""
    from dul_jax.data import sources
    return sources.describe(data_cfg)


def train_iterator(data_cfg, batch_size, seed, process_index=0, process_count=1):
    from dul_jax.data import pipeline
    return pipeline.train_iterator(data_cfg, batch_size, seed, process_index, process_count)


def eval_batches(data_cfg, batch_size, max_examples=None, split=None, process_index=0,
                 process_count=1):
    from dul_jax.data import pipeline
    return pipeline.eval_batches(data_cfg, batch_size, max_examples, split, process_index,
                                 process_count)


__all__ = ['DataSpec', 'Kind', 'decode_text', 'describe', 'encode_text', 'eval_batches',
           'train_iterator']
