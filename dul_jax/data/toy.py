"""Synthetic 2-D Gaussian mixtures for GAN mode-coverage experiments: `data.name = 'toy:grid25'`
or `'toy:ring8'`.

- toy:grid25: 25 means at (i, j) for i, j in {-4, -2, 0, 2, 4}, isotropic std 0.05.
- toy:ring8: 8 means on a circle of radius 2 at angles 2*pi*k/8, isotropic std 0.02.

Components have equal weights. Each split is drawn with its own fixed numpy seed, so every process
and every run sees the same points; a point's label is the component that generated it.
`mode_coverage` is the metric of the papers below: of 2,500 samples, a mode is covered when at
least 20 lie within 3 std of its mean, and "high-quality" samples lie within 3 std of the nearest
mean. Pure numpy: nothing here touches data.dir or TFDS.

References:
  Srivastava et al. 2017, "VEEGAN: Reducing Mode Collapse in GANs using Implicit Variational
  Learning", arXiv:1705.07761.
  Lin et al. 2018, "PacGAN: The power of two samples in generative adversarial networks",
  arXiv:1712.04086.
"""

import dataclasses
import functools

import numpy as np

from dul_jax.errors import UserError

PREFIX = 'toy:'
SPLITS = {'train': (100_000, 0), 'test': (10_000, 1)}   # split: (points, numpy seed)


@dataclasses.dataclass(frozen=True, eq=False)   # eq=False: arrays have no elementwise ==/hash
class Mixture:
    means: np.ndarray   # (K, 2) float32
    std: float          # isotropic, the same for every component


def _grid25():
    axis = np.arange(-4, 5, 2, dtype=np.float32)
    return Mixture(np.stack(np.meshgrid(axis, axis, indexing='ij'), -1).reshape(-1, 2), 0.05)


def _ring8():
    angles = 2 * np.pi * np.arange(8) / 8
    return Mixture((2 * np.stack([np.cos(angles), np.sin(angles)], -1)).astype(np.float32), 0.02)


MIXTURES = {'toy:grid25': _grid25(), 'toy:ring8': _ring8()}


def is_toy(name: str) -> bool:
    return name.startswith(PREFIX)


def mixture(name: str) -> Mixture:
    if name not in MIXTURES:
        raise UserError(f"data set {name!r} is not a known toy set; set --config.data.name to "
                        f"{' or '.join(MIXTURES)}.")
    return MIXTURES[name]


@functools.cache
def split_arrays(name: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(points (N, 2) float32, labels (N,) int32) of one split; the same on every call."""
    mix = mixture(name)
    if split not in SPLITS:
        raise UserError(f"toy data set {name!r} has no split {split!r}; use "
                        f"{' or '.join(repr(s) for s in SPLITS)}.")
    count, seed = SPLITS[split]
    rng = np.random.default_rng(seed)
    labels = rng.integers(len(mix.means), size=count).astype(np.int32)
    points = mix.means[labels] + mix.std * rng.standard_normal((count, 2))
    return points.astype(np.float32), labels


def mode_coverage(points, name: str, threshold_std: float = 3.0, min_count: int = 20) -> dict:
    """Mode coverage of `points` (N, 2) under the named mixture (VEEGAN / PacGAN, on 2,500 samples):
    'modes': how many means have at least min_count points within threshold_std std (Euclidean);
    'high_quality': the share of points within threshold_std std of their nearest mean;
    'counts': (K,) points within threshold_std std of each mean."""
    mix = mixture(name)
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    distances = np.linalg.norm(points[:, None, :] - mix.means[None, :, :], axis=-1)   # (N, K)
    near = distances <= threshold_std * mix.std
    counts = near.sum(axis=0)
    return {'modes': int((counts >= min_count).sum()),
            # within the threshold of the nearest mean <=> within it of some mean
            'high_quality': float(near.any(axis=1).mean()) if len(points) else 0.0,
            'counts': counts}

