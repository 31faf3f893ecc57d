"""The conditioning vector of a diffusion network: noise level t and class label -> (B, D).

Shared by the U-Net and the DiT. The class table has one row more than there are classes: index
`num_classes` is the null class, what a classifier-free-guided model sees when the label is dropped.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from dul_jax.models.layers import dense_init


def timestep_embedding(t: jax.Array, dim: int, max_period: float = 10000.0) -> jax.Array:
    """(B,) steps (int or float) -> (B, dim) float32: [sin(t f_i), cos(t f_i)], f_i =
    max_period^(-i / (dim / 2)) for i < dim / 2 (the Transformer's positions, at real-valued t)."""
    if dim % 2:
        raise ValueError(f'timestep embedding needs an even width, got {dim}')
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(dim // 2, dtype=jnp.float32) / (dim // 2))
    angles = t.astype(jnp.float32)[:, None] * freqs[None]
    return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)


class TimeClassEmbed(nn.Module):
    """MLP(sinusoid(t)) + class embedding (if num_classes > 0): (B,) t, (B,) labels -> (B, dim).

    Attributes:
      dim: output width.
      num_classes: 0 for no class embedding; else the table has num_classes + 1 rows.
      freq_dim: width of the sinusoidal embedding of t (even).
      dtype: computation dtype.
    """
    dim: int
    num_classes: int = 0
    freq_dim: int = 128
    dtype: jnp.dtype = jnp.float32

    @property
    def null_class(self) -> int:
        """The label of the dropped (null) class: `num_classes`."""
        return self.num_classes

    @nn.compact
    def __call__(self, t: jax.Array, labels: jax.Array | None = None) -> jax.Array:
        """t: (B,) steps (int or float); labels: (B,) ints in [0, num_classes], required iff
        num_classes > 0 (ignored otherwise). Returns the (B, dim) conditioning vector."""
        h = timestep_embedding(t, self.freq_dim).astype(self.dtype)
        for i, names in enumerate(((None, 'mlp'), ('mlp', 'embed'))):
            h = nn.Dense(self.dim, dtype=self.dtype, name=f'time_mlp_{i}',
                         kernel_init=dense_init(names),
                         bias_init=nn.with_logical_partitioning(nn.initializers.zeros,
                                                                names[1:]))(h)
            h = nn.silu(h) if i == 0 else h
        if self.num_classes:
            if labels is None:
                raise ValueError('this model is class-conditional: pass labels (num_classes for '
                                 'the null class)')
            h = h + nn.Embed(self.num_classes + 1, self.dim, name='class_embed',
                             embedding_init=nn.with_logical_partitioning(
                                 nn.initializers.normal(0.02), (None, 'embed')))(labels)
        return nn.with_logical_constraint(h, ('batch', 'embed'))
