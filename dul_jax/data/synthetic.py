"""`data.name='synthetic'`: random examples of a stated shape, for throughput runs and
ahead-of-time compiles of models whose data set a host does not have (pod-size configs).

Keys (under `data`): `synthetic_shape` (H, W, C) for images, else text of `seq_len` tokens over
`synthetic_vocab` symbols; images have `synthetic_levels` gray levels and `synthetic_classes`
labels (0: unlabeled). Each example is a pure function of its index, so runs resume exactly.
"""

import numpy as np

from dul_jax.data.spec import DataSpec, Kind
from dul_jax.errors import UserError

NAME = 'synthetic'
EXAMPLES = {'train': 1 << 20, 'test': 1 << 12}   # the pipeline repeats epochs; sizes are nominal


def describe(data_cfg) -> DataSpec:
    """The DataSpec of the configured random data, checked in one sentence per mistake."""
    shape = tuple(int(n) for n in data_cfg.get('synthetic_shape', ()) or ())
    if shape:
        if len(shape) != 3 or min(shape) < 1:
            raise UserError(f'data.synthetic_shape={shape} is not an image shape (H, W, C); '
                            'set --config.data.synthetic_shape to three positive sizes, or () '
                            'for text.')
        levels = int(data_cfg.get('synthetic_levels', 256))
        if not 2 <= levels <= 256:
            raise UserError(f'data.synthetic_levels={levels} must be between 2 and 256 (uint8 '
                            'images).')
        return DataSpec(name=NAME, kind=Kind.IMAGE, shape=shape, num_levels=levels,
                        num_classes=int(data_cfg.get('synthetic_classes', 0)), vocab=None,
                        train_split='train', eval_split='test', num_train=EXAMPLES['train'],
                        num_eval=EXAMPLES['test'])
    vocab, length = int(data_cfg.get('synthetic_vocab', 256)), int(data_cfg.get('seq_len') or 0)
    if vocab < 2 or length < 1:
        raise UserError(f'synthetic text needs data.seq_len >= 1 and data.synthetic_vocab >= 2, '
                        f'got {length} and {vocab}.')
    return DataSpec(name=NAME, kind=Kind.TEXT, shape=(length,), num_levels=vocab, num_classes=0,
                    vocab=None, train_split='train', eval_split='test',
                    num_train=EXAMPLES['train'] * length, num_eval=EXAMPLES['test'] * length)


class RandomExamples:
    """A split of random examples: example i is drawn from a generator seeded by (split, i)."""

    def __init__(self, spec: DataSpec, split: str):
        self.spec, self.split = spec, split

    def __len__(self):
        return EXAMPLES[self.split]

    def read(self, indices):
        spec, split = self.spec, 0 if self.split == 'train' else 1
        rngs = [np.random.default_rng((split, int(i))) for i in indices]
        values = np.zeros((len(rngs), *spec.shape), spec.kind.dtype)
        for row, rng in zip(values, rngs):
            row[...] = rng.integers(0, spec.num_levels, spec.shape, values.dtype)
        if spec.is_text:
            return {spec.batch_key: values}
        labels = [rng.integers(0, max(spec.num_classes, 1)) for rng in rngs]
        return {spec.batch_key: values, 'label': np.array(labels, np.int32)}
