"""The CPU performance target (issue 8): GPT 4 layers, width 256, 4 heads, context 256, batch 16,
vocab 256 (3.36M parameters), AdamW, float32. PyTorch 2.13 on this machine: ~4,300 tokens/s eager,
~6,500 with torch.compile; a plain Flax version ~3,650. Its figures are measured under the CPU
allocator recipe, `benchmarks/cpu_env.sh`, with the step on the calling thread (below)."""

from dul_jax import model_configs
from dul_jax.config import base_config


def get_config():
    c = base_config()
    c.data.name = 'python_source'
    c.data.seq_len = 256
    c.data.synthetic_vocab = 256
    c.model = model_configs.autoregressive()
    c.model.num_layers = 4
    c.model.scan_unroll = 0       # unrolled: the faster step for a few layers on the CPU
    c.model.num_heads = 4
    c.model.embed_dim = 256
    c.model.mlp_dim = 1024
    c.train.batch_size = 16
    c.mesh.data = 1
    c.runtime.cpu_async_dispatch = False  # 470 MB of temporaries: see benchmarks/cpu_env.sh
    return c
