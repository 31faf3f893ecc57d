"""What a data set is (DataSpec) and the text codec: light, so models and benchmarks can use
them without importing TFDS or grain."""

import dataclasses
import json

import numpy as np


@dataclasses.dataclass(frozen=True)
class DataSpec:
    name: str
    kind: str                 # 'image', 'text' or 'points' (real vectors, e.g. toy:grid25)
    shape: tuple[int, ...]    # one example: (H, W, C) for images, (seq_len,) text, (D,) points
    num_levels: int           # distinct values per position: gray levels, 256 bytes, or len(vocab);
                              # 0 for points, which are continuous
    num_classes: int          # 0 when unlabeled
    vocab: str | None         # 'chars' text: the characters in id order; else None
    train_split: str
    eval_split: str           # 'test' where it exists, else 'validation'
    num_train: int            # examples (images, points) or tokens (text) in train_split
    num_eval: int

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
