"""A GPT of about 1.3B parameters for a TPU v5e-256 slice: 24 layers of width 2048, 16 heads,
context 2048, a 32,768-symbol vocabulary, 512 sequences (1M tokens) a step, bf16 compute,
float32 master weights, the state split over all 256 chips (FSDP).

Data: synthetic tokens of the real shape, so `dul-jax compile` and `plan` need no data set; point
`data.name` at a text set to train. `target` is the slice this config is sized for.
"""

from dul_jax import model_configs
from dul_jax.config import base_config


def get_config():
    c = base_config()
    c.target = 'v5e:16x16'
    # Real text: --config.data.name=tfds:NAME --config.data.text_store=array_record (streams
    # token windows from files beside the prepared set, e.g. in a gs:// data.tfds_dir).
    c.data.name = 'synthetic'
    c.data.seq_len = 2048
    c.data.synthetic_vocab = 32768
    c.model = model_configs.autoregressive()
    c.model.num_layers = 24
    c.model.num_heads = 16
    c.model.embed_dim = 2048
    c.model.mlp_dim = 8192
    c.model.dtype = 'bfloat16'
    c.model.remat = 'dots'
    c.optim.lr = 3e-4
    c.optim.warmup_steps = 2000
    c.train.steps = 50000
    c.train.batch_size = 512
    c.eval.batch_size = 256
    c.mesh.data = 1
    c.mesh.fsdp = -1
    return c
