"""MAE with a ViT-L/16 encoder (24 layers, width 1024, 16 heads) and the paper's decoder
(8 layers, width 512, 16 heads) on 224x224 RGB images, 75% of the 196 patches masked, for a TPU
v5e-256 slice: 4096 images a step (He et al. 2022 pre-train at 4096), bf16 compute.

Data: synthetic images of ImageNet's training shape (see gpt_1b.py); `target` is the slice.
"""

from dul_jax import model_configs
from dul_jax.config import base_config


def get_config():
    c = base_config()
    c.task = 'mae'
    c.target = 'v5e:16x16'
    c.data.name = 'synthetic'
    c.data.synthetic_shape = (224, 224, 3)
    c.data.synthetic_levels = 256
    c.data.synthetic_classes = 1000
    c.model = model_configs.mae()
    c.model.patch_size = 16
    c.model.num_layers = 24
    c.model.embed_dim = 1024
    c.model.num_heads = 16
    c.model.mlp_dim = 4096
    c.model.decoder_layers = 8
    c.model.decoder_embed_dim = 512
    c.model.decoder_heads = 16
    c.model.decoder_mlp_dim = 2048
    c.model.norm_pix_loss = True
    c.model.dtype = 'bfloat16'
    c.optim.lr = 2.4e-3        # 1.5e-4 x 4096 / 256, the paper's scaling rule
    c.optim.b2 = 0.95
    c.optim.weight_decay = 0.05
    c.optim.warmup_steps = 12000
    c.train.steps = 250000
    c.train.batch_size = 4096
    c.eval.batch_size = 1024
    c.mesh.data = -1
    c.mesh.fsdp = 1
    return c
