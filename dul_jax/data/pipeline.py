"""grain pipelines over example indices: an infinite, checkpointable training iterator and
padded, exactly-once evaluation batches.

Both work on indices (of examples, or of text windows) and read a whole batch at once, so a batch
costs one fancy index rather than batch_size Python calls.
"""

import grain
import numpy as np

from dul_jax.data.sources import describe, split_reader
from dul_jax.errors import UserError

# Reading a batch is cheap, so a few threads and a short queue keep memory small.
READ_OPTIONS = grain.ReadOptions(num_threads=2, prefetch_buffer_size=8)


def train_iterator(data_cfg, batch_size, seed, process_index=0, process_count=1):
    """An infinite iterator of per-process batches; get_state()/set_state() restore its position.

    Every process shuffles the same global index stream (by `seed`, reshuffled each epoch) and cuts
    it into global batches of batch_size * process_count; process i reads only rows
    [i * batch_size, (i + 1) * batch_size) of each. So the global batch, and the training run, is
    the same whatever the number of processes. Batches have a fixed shape and may span two epochs.
    """
    _check_batch_and_process(batch_size, process_index, process_count)
    spec = describe(data_cfg)
    reader = split_reader(data_cfg, spec, spec.train_split, training=True)
    global_batch = batch_size * process_count
    if len(reader) < global_batch:
        raise UserError(f'the train split of {spec.name!r} has {len(reader)} examples, fewer than '
                        f'one global batch of {global_batch}; set --config.train.batch_size lower.')
    mine = slice(process_index * batch_size, (process_index + 1) * batch_size)
    batches = (grain.MapDataset.range(len(reader)).shuffle(seed=int(seed) % 2**32).repeat()
               .batch(global_batch, drop_remainder=True)
               .map(lambda indices: reader.read(indices[mine])))
    return iter(batches.to_iter_dataset(READ_OPTIONS))


def eval_batches(data_cfg, batch_size, max_examples=None, split=None,
                 process_index=0, process_count=1):
    """Batches that show each of the first `max_examples` examples (or text windows) of `split`
    exactly once, in the stored order, with 'mask' 1 for real examples and 0 for padding.

    As in training, global batch k holds examples [k * G, (k + 1) * G), G = batch_size *
    process_count (the last padded with copies of example 0), and process i reads its rows
    [i * batch_size, (i + 1) * batch_size): the global batches, and what is computed from them,
    are the same whatever the number of processes, and every process yields as many batches.
    """
    _check_batch_and_process(batch_size, process_index, process_count)
    spec = describe(data_cfg)
    reader = split_reader(data_cfg, spec, split or spec.eval_split, training=False)
    total = len(reader) if max_examples is None else min(len(reader), int(max_examples))
    global_batch = batch_size * process_count
    num_batches = _ceil_div(total, global_batch)
    indices = np.zeros(num_batches * global_batch, dtype=np.int64)
    indices[:total] = np.arange(total)
    mask = (np.arange(num_batches * global_batch) < total).astype(np.float32)

    def read_batch(k):
        start = k * global_batch + process_index * batch_size
        rows = slice(start, start + batch_size)
        return {**reader.read(indices[rows]), 'mask': mask[rows]}

    return iter(grain.MapDataset.range(num_batches).map(read_batch).to_iter_dataset(READ_OPTIONS))


def _ceil_div(a, b):
    return -(-a // b)


def _check_batch_and_process(batch_size, process_index, process_count):
    if batch_size < 1:
        raise UserError(f'the per-process batch size is {batch_size}; set the batch size to at '
                        f'least the number of processes.')
    if not 0 <= process_index < process_count:
        raise ValueError(f'process_index {process_index} is not in [0, {process_count}).')
