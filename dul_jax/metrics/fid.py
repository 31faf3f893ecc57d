"""Frechet distance between feature sets, and k-NN precision and recall.

"Domain FID" is the Frechet distance computed on the penultimate features of a small classifier
trained on the same data set (domain_classifier.py), not on Inception features: comparable
between runs on the same data, not with published FIDs. All in float64 numpy.
"""

import numpy as np


def feature_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and unbiased covariance (D, D) of (N, D) features."""
    features = np.asarray(features, np.float64)
    return features.mean(axis=0), np.cov(features, rowvar=False)


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def frechet_distance(mu1, cov1, mu2, cov2) -> float:
    """||mu1 - mu2||^2 + Tr(cov1 + cov2 - 2 (cov1 cov2)^(1/2)): the squared 2-Wasserstein distance
    between N(mu1, cov1) and N(mu2, cov2).

    Tr (cov1 cov2)^(1/2) is computed as the sum of the square roots of the eigenvalues of the
    symmetric PSD matrix cov1^(1/2) cov2 cov1^(1/2) (same spectrum), which stays real and stable
    where cov1 cov2 is singular (fewer samples than feature dimensions).
    """
    root1 = _sqrt_psd(np.asarray(cov1, np.float64))
    middle = root1 @ np.asarray(cov2, np.float64) @ root1
    trace_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0.0, None)).sum()
    diff = np.asarray(mu1, np.float64) - np.asarray(mu2, np.float64)
    return float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2.0 * trace_sqrt)


def frechet_distance_of(features1: np.ndarray, features2: np.ndarray) -> float:
    return frechet_distance(*feature_stats(features1), *feature_stats(features2))


def _pairwise_sq(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    sq = (a * a).sum(1)[:, None] + (b * b).sum(1)[None] - 2.0 * a @ b.T
    return np.maximum(sq, 0.0)


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019): each set's manifold is the union
    of balls around its points with radius the distance to the k-th nearest neighbour in the set.
    Precision: the fraction of fake points inside the real manifold; recall: the reverse."""
    real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)

    def radii(x):  # k-th neighbour, not counting the point itself (distance 0 at index 0)
        return np.sort(_pairwise_sq(x, x), axis=1)[:, k]

    def coverage(points, manifold, manifold_radii):
        return float(np.mean((_pairwise_sq(points, manifold) <= manifold_radii[None]).any(1)))

    return coverage(fake, real, radii(real)), coverage(real, fake, radii(fake))
