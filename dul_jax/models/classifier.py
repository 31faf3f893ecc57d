"""A small convolutional classifier, whose penultimate features serve sample-quality metrics."""

import flax.linen as nn
import jax.numpy as jnp

from dul_jax.models.layers import conv, dense_init


class ConvClassifier(nn.Module):
    """(B, H, W, C) floats in [-1, 1] -> (logits (B, num_classes), features (B, feature_dim)).

    Three 3x3 convolutions (the last two with stride 2), global average pooling and a hidden
    layer: the features are that layer's GELU activations.

    Attributes:
      num_classes: number of output logits.
      width: channels of the first convolution (2 * width after it).
      feature_dim: width of the hidden layer, i.e. of the features.
    """
    num_classes: int
    width: int = 32
    feature_dim: int = 128

    @nn.compact
    def __call__(self, x):
        """x: (B, H, W, C) floats in [-1, 1].

        Returns:
          logits (B, num_classes) and features (B, feature_dim), both float32.
        """
        h = nn.gelu(conv(self.width, 'conv_0', names=('height', 'width', 'channels',
                                                       'conv_out'))(x))
        h = nn.gelu(conv(2 * self.width, 'conv_1', stride=2)(h))
        h = nn.gelu(conv(2 * self.width, 'conv_2', stride=2)(h))
        h = h.mean(axis=(1, 2))
        features = nn.gelu(nn.Dense(self.feature_dim, name='hidden',
                                    kernel_init=dense_init((None, 'mlp')))(h))
        logits = nn.Dense(self.num_classes, name='head',
                          kernel_init=dense_init(('mlp', None)))(features)
        return logits.astype(jnp.float32), features.astype(jnp.float32)
