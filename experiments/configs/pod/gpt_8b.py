"""A GPT of about 8B parameters for a TPU v5p-128 slice: 40 layers of width 4096, 32 heads,
context 2048, a 32,768-symbol vocabulary, 256 sequences (0.5M tokens) a step, bf16 compute,
float32 master weights split over all 128 chips (FSDP), every block recomputed in the backward.

Data: synthetic tokens of the real shape (see gpt_1b.py). `target` is the slice it is sized for.
"""

from dul_jax import model_configs
from dul_jax.config import base_config


def get_config():
    c = base_config()
    c.target = 'v5p:4x4x8'
    # Real text: --config.data.name=tfds:NAME --config.data.text_store=array_record (streams
    # token windows from files beside the prepared set, e.g. in a gs:// data.tfds_dir).
    c.data.name = 'synthetic'
    c.data.seq_len = 2048
    c.data.synthetic_vocab = 32768
    c.model = model_configs.autoregressive()
    c.model.num_layers = 40
    c.model.num_heads = 32
    c.model.embed_dim = 4096
    c.model.mlp_dim = 16384
    c.model.dtype = 'bfloat16'
    c.model.remat = 'full'
    c.optim.lr = 1.5e-4
    c.optim.warmup_steps = 2000
    c.train.steps = 100000
    c.train.batch_size = 256
    c.eval.batch_size = 128
    c.mesh.data = 1
    c.mesh.fsdp = -1
    return c
