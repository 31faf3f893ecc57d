"""What a data set is (DataSpec, with its Kind) and the text codec: light, so models and
benchmarks can use them without importing TFDS or grain."""

import dataclasses
import enum
import json

import numpy as np


class Kind(enum.StrEnum):
    """What one example of a data set is. A str (`Kind.IMAGE == 'image'`), so data_spec.json keeps
    the plain name and messages read 'image', 'text' or 'points'."""
    IMAGE = 'image'      # (H, W, C) integer levels
    TEXT = 'text'        # (seq_len,) token ids
    POINTS = 'points'    # (D,) real vectors, e.g. toy:grid25

    @property
    def batch_key(self) -> str:
        """The key of a batch dict that holds the examples."""
        return _BATCH[self][0]

    @property
    def dtype(self) -> np.dtype:
        """The dtype of those examples in a host batch (the narrowest for images: uint8)."""
        return np.dtype(_BATCH[self][1])

    @property
    def labeled(self) -> bool:
        """Whether a batch also holds 'label' (0 where the data set has no classes)."""
        return self is not Kind.TEXT


_BATCH = {Kind.IMAGE: ('image', np.uint8), Kind.TEXT: ('tokens', np.int32),
          Kind.POINTS: ('point', np.float32)}


@dataclasses.dataclass(frozen=True)
class DataSpec:
    name: str
    kind: Kind                # a str ('image', 'text' or 'points') is taken as its Kind
    shape: tuple[int, ...]    # one example: (H, W, C) for images, (seq_len,) text, (D,) points
    num_levels: int           # distinct values per position: gray levels, 256 bytes, or len(vocab);
                              # 0 for points, which are continuous
    num_classes: int          # 0 when unlabeled
    vocab: str | None         # 'chars' text: the characters in id order; else None
    train_split: str
    eval_split: str           # 'test' where it exists, else 'validation'
    num_train: int            # examples (images, points) or tokens (text) in train_split
    num_eval: int

    def __post_init__(self):
        # ValueError for a name that is no Kind: from_json's contract for text that is no spec.
        object.__setattr__(self, 'kind', Kind(self.kind))

    @property
    def is_image(self) -> bool:
        return self.kind is Kind.IMAGE

    @property
    def is_text(self) -> bool:
        return self.kind is Kind.TEXT

    @property
    def is_points(self) -> bool:
        return self.kind is Kind.POINTS

    @property
    def batch_key(self) -> str:
        """The key of a batch dict that holds the examples: 'image', 'tokens' or 'point'."""
        return self.kind.batch_key

    def dummy_batch(self, size: int) -> dict:
        """Zeros shaped like a batch of `size` examples (host numpy arrays): for initialisation
        and shape inference."""
        batch = {self.batch_key: np.zeros((size,) + tuple(self.shape), self.kind.dtype)}
        if self.kind.labeled:
            batch['label'] = np.zeros((size,), np.int32)
        return batch

    def to_json(self) -> str:
        """The spec as a JSON object of its fields (what a workdir keeps as data_spec.json)."""
        return json.dumps(dataclasses.asdict(self), indent=2) + '\n'

    @classmethod
    def from_json(cls, text: str) -> 'DataSpec':
        """The inverse of to_json; ValueError (or TypeError) for text that is not such a spec."""
        fields = json.loads(text)
        if not isinstance(fields, dict):
            raise TypeError('not a JSON object')
        # JSON has no tuples: the shape comes back as a list
        return cls(**{**fields, 'shape': tuple(int(n) for n in fields['shape'])})


def encode_text(text, spec):
    """str -> int32 token ids under the spec's vocabulary (the inverse of decode_text)."""
    if spec.vocab is None:
        return np.frombuffer(text.encode('utf-8'), dtype=np.uint8).astype(np.int32)
    index = {c: i for i, c in enumerate(spec.vocab)}
    return np.array([index[c] for c in text], dtype=np.int32)


def decode_text(tokens, spec):
    """Token ids (any shape; read in row-major order) -> str. Invalid UTF-8 becomes U+FFFD."""
    ids = np.asarray(tokens).reshape(-1)
    if spec.vocab is None:
        return ids.astype(np.uint8).tobytes().decode('utf-8', errors='replace')
    return ''.join(spec.vocab[i] for i in ids)
