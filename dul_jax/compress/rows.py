"""Row coding: rows of symbols range-coded (constriction) under a model that predicts one
position at a time, its float logits made integer frequencies on the host (`quantize`) so that
the encoder and the decoder code with exactly the same numbers."""

from typing import Protocol

import constriction
import numpy as np

PRECISION = 24                   # frequency resolution: 2^24, constriction's default for queues
LAG = 16                         # positions the encoder lets the device run ahead of the coder


# ---- probabilities -> frequencies -----------------------------------------------------------

def quantize(logits: np.ndarray, precision: int = PRECISION) -> np.ndarray:
    """(rows, L) float logits -> (rows, L) integer frequencies (as float64) summing to 2^precision.

    Deterministic on the host: float64 softmax, floor(p * 2^precision), at least 1 per symbol
    (every symbol stays codable), and the remainder added to each row's most probable symbol.
    """
    z = np.asarray(logits, np.float64)
    p = np.exp(z - z.max(axis=-1, keepdims=True))
    p /= p.sum(axis=-1, keepdims=True)
    freqs = np.maximum(np.floor(p * 2.0 ** precision), 1.0)
    rows = np.arange(freqs.shape[0])
    freqs[rows, freqs.argmax(axis=-1)] += 2.0 ** precision - freqs.sum(axis=-1)
    return freqs


# ---- the model, one position at a time -------------------------------------------------------

class PositionDecoder(Protocol):
    """What a task's `position_decoder(params)` returns: its exact model, one position at a time,
    on `rows` rows side by side. `rows` changes which kernels run and so the logits' last bits:
    changing it needs a format.VERSION bump."""
    rows: int
    length: int  # positions per row

    def start(self, rows: int): ...                     # -> state before position 0
    def next(self, state): ...                          # -> (state, (rows, levels) logits)
    def feed(self, state, symbols: np.ndarray): ...     # -> state with the symbols written


# ---- coding rows of symbols -------------------------------------------------------------------

def _chunks(num_rows: int, most: int):
    """(start, stop, rows per model call): the same on both sides, from the header's row count
    and the stepper's fixed width."""
    width = max(min(num_rows, most), 1)
    return [(s, min(s + width, num_rows), width) for s in range(0, num_rows, width)]


def encode_rows(stepper, symbols: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, float]:
    """Range-code row r's first lengths[r] symbols; returns (uint32 words, ideal bits under the
    quantized model). Rows are coded side by side, position by position."""
    encoder = constriction.stream.queue.RangeEncoder()
    family = constriction.stream.model.Categorical(perfect=False)
    ideal_bits = 0.0
    for start, stop, width in _chunks(len(symbols), stepper.rows):
        block = np.zeros((width, symbols.shape[1]), np.int32)
        block[:stop - start] = symbols[start:stop]
        block_lengths = np.zeros(width, np.int64)
        block_lengths[:stop - start] = lengths[start:stop]
        state, pending = stepper.start(width), []
        for t in range(int(block_lengths.max()) + LAG):
            if t < block_lengths.max():
                state, logits = stepper.next(state)
                pending.append((t, logits))    # fetched LAG positions later: the device runs ahead
                state = stepper.feed(state, block[:, t])
            if len(pending) > LAG or (pending and t >= block_lengths.max()):
                ideal_bits += _encode_position(encoder, family, *pending.pop(0), block,
                                               block_lengths)
    return encoder.get_compressed(), ideal_bits


def _encode_position(encoder, family, t, logits, block, block_lengths) -> float:
    """Code position t of the rows that reach it; returns its ideal bits."""
    active = block_lengths > t
    freqs = quantize(np.asarray(logits)[active])
    coded = block[active, t]
    encoder.encode(coded, family, freqs / 2.0 ** PRECISION)
    return float(np.sum(PRECISION - np.log2(freqs[np.arange(len(coded)), coded])))


def decode_rows(stepper, words: np.ndarray, lengths: np.ndarray, width: int) -> np.ndarray:
    """The inverse of encode_rows: (rows, width) symbols (zeros past each row's length).
    ValueError where the words cannot have come from encode_rows with these lengths (a damaged
    payload, or a damaged row count in the header: it changes the rows per model call)."""
    decoder = constriction.stream.queue.RangeDecoder(words)
    family = constriction.stream.model.Categorical(perfect=False)
    out = np.zeros((len(lengths), width), np.int32)
    for start, stop, rows in _chunks(len(lengths), stepper.rows):
        block_lengths = np.zeros(rows, np.int64)
        block_lengths[:stop - start] = lengths[start:stop]
        state = stepper.start(rows)
        for t in range(int(block_lengths.max())):
            state, logits = stepper.next(state)
            active = block_lengths > t
            freqs = quantize(np.asarray(logits)[active])
            symbols = np.zeros(rows, np.int32)
            try:
                symbols[active] = decoder.decode(family, freqs / 2.0 ** PRECISION)
            except AssertionError:   # constriction's word for words no encoder wrote
                raise ValueError('its payload is not valid under this model') from None
            out[start:stop, t] = symbols[:stop - start]
            state = stepper.feed(state, symbols)
    return out
