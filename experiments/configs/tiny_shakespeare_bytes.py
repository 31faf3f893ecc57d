"""`tiny_shakespeare_char.py` on raw bytes (vocabulary 256) with context 128: the model that
`dul-jax compress` codes text files with (a character model cannot code arbitrary bytes)."""

import os

from dul_jax.config import load_config


def get_config():
    c = load_config(os.path.join(os.path.dirname(__file__), 'tiny_shakespeare_char.py'))
    c.data.update(text_vocab='bytes', seq_len=128)
    c.train.update(steps=2000, eval_every=2000, ckpt_every=500)
    return c
