"""The data layer: TFDS builders for local corpora, the TFDS catalog, and grain pipelines.

The trainer needs only `describe`, `train_iterator`, `eval_batches` and `decode_text`.
"""

from dul_jax.data.catalog import LOCAL_BUILDERS
from dul_jax.data.pipeline import eval_batches, train_iterator
from dul_jax.data.sources import DataSpec, decode_text, describe, encode_text

__all__ = ['LOCAL_BUILDERS', 'DataSpec', 'decode_text', 'describe', 'encode_text', 'eval_batches',
           'train_iterator']
