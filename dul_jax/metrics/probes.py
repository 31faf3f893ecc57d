"""How good are frozen features? A linear probe and a k-nearest-neighbour classifier, on numpy.

Both take features already extracted (N, D) with integer labels (N,) and return the fraction of
test examples classified correctly. They run on the host after training (scikit-learn and numpy),
never inside a jitted step.
"""

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler


def linear_probe_accuracy(train_x, train_y, test_x, test_y, c: float = 1.0,
                          max_iter: int = 1000) -> float:
    """Multinomial logistic regression (L-BFGS, L2 strength 1/c) on standardised features.

    Standardising with the train split's mean and variance plays the role of the parameter-free
    BatchNorm that MAE puts before its linear probe: feature scales differ wildly between a
    trained and a random encoder, and the probe should not depend on them.
    """
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=max_iter))
    probe.fit(np.asarray(train_x, np.float64), np.asarray(train_y))
    return float(np.mean(probe.predict(np.asarray(test_x, np.float64)) == np.asarray(test_y)))


def knn_accuracy(train_x, train_y, test_x, test_y, k: int = 20, chunk: int = 1024) -> float:
    """k-NN by cosine similarity: each test example takes the majority label of its k most
    similar train examples; a tie goes to the tied class with the larger summed similarity."""
    train = _unit_rows(train_x)
    train_y = np.asarray(train_y)
    num_classes = int(train_y.max()) + 1
    k = min(k, len(train))
    predictions = []
    for start in range(0, len(test_x), chunk):  # bounded memory: (chunk, N_train) similarities
        sims = _unit_rows(test_x[start:start + chunk]) @ train.T
        nearest = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        near_sims = np.take_along_axis(sims, nearest, axis=1)
        votes = np.zeros((len(sims), num_classes))
        sim_sums = np.zeros((len(sims), num_classes))
        rows = np.arange(len(sims))[:, None]
        np.add.at(votes, (rows, train_y[nearest]), 1.0)
        np.add.at(sim_sums, (rows, train_y[nearest]), near_sims)
        # |sim_sums| <= k, so this term orders only classes with equal votes
        predictions.append(np.argmax(votes + sim_sums / (2 * k + 1), axis=1))
    return float(np.mean(np.concatenate(predictions) == np.asarray(test_y)))


def _unit_rows(x) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
