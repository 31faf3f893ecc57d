"""Lossless compression with a trained autoregressive model and range coding (constriction).

  dul-jax compress   --workdir RUN --input X --output Y
  dul-jax decompress --workdir RUN --input Y --output X

What X is depends on the run in RUN:
- an image run (task 'pixelcnn', or 'autoregressive' on an image data set): X is a .npy file of a
  uint8 array (N, H, W, C) of levels in [0, L), with H, W, C and L those of the run's data set
  (e.g. (N, 28, 28, 1) with values 0/1 for binarized MNIST). Images are coded in raster order.
- a byte-level text run (task 'autoregressive', data.text_vocab='bytes'): X is any file, coded as
  raw bytes in windows of data.seq_len (the model's context), each window from the start symbol.
- a latent-variable run (a task with `posterior` and `pixel_log_probs` and no exact
  one-position-at-a-time model, e.g. 'vae'): X is images as above, coded with bits-back ANS
  (compress/bitsback.py); the rest of this docstring is about the autoregressive coder.
Class-conditional models are refused: the labels would have to be coded too.

The decoder runs the model on the symbols decoded so far, one position at a time (the PixelCNN
from its cached activations, models/pixelcnn_decode.py; the Transformer with its KV cache). The
encoder runs exactly the same jitted steps on exactly the same inputs (the true prefix), so the
probabilities agree bit for bit on the same machine whatever the convolution or attention kernels
do with rounding; a parallel forward pass would agree only up to float rounding. Compressing and
decompressing in separate processes is tested on the CPU; on a GPU, XLA picks convolution and
matmul kernels by timing them at compile time, so run both sides with
XLA_FLAGS=--xla_gpu_autotune_level=0 (or on the CPU) to keep the kernels, and the bits, the same.
On the host the float32 logits become frequencies deterministically (float64 softmax,
floor(p * 2^24), every symbol at least 1, the remainder to the most probable symbol), which
constriction's range coder turns into bits.

The file format is compress/format.py's, the row coding compress/rows.py's, and the coder of a
run and the two commands compress/command.py's.
"""

from dul_jax.compress.command import (
    Codec,
    command,
    compress_file,
    decompress_file,
    load_codec,
    make_codec,
)
from dul_jax.compress.format import checkpoint_step
from dul_jax.compress.rows import PRECISION, quantize

__all__ = ['PRECISION', 'Codec', 'checkpoint_step', 'command', 'compress_file', 'decompress_file',
           'load_codec', 'make_codec', 'quantize']
