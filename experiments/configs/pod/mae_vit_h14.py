"""MAE with a ViT-H/14 encoder (32 layers, width 1280, 16 heads) and the decoder of
mae_vit_l16.py on 224x224 RGB images, 75% of the 256 patches masked, for a TPU v5p-128 slice:
4096 images a step, bf16 compute, the state split over all 128 chips (FSDP)."""

import os

from dul_jax.config import load_config


def get_config():
    c = load_config(os.path.join(os.path.dirname(__file__), 'mae_vit_l16.py'))
    c.target = 'v5p:4x4x8'
    c.model.patch_size = 14
    c.model.num_layers = 32
    c.model.embed_dim = 1280
    c.model.mlp_dim = 5120
    c.mesh.data = 1
    c.mesh.fsdp = -1
    return c
