"""Pictures of learnt features: PCA and t-SNE of a run's frozen features of the eval split,
coloured by class, side by side in one PNG.

  python experiments/feature_plot.py --workdir runs/simclr_mnist --out docs/simclr_features.png
  python experiments/feature_plot.py --workdir runs/simclr_mnist --pixels --out docs/pixels.png

Any run whose task gives `features` (contrastive, MAE) works; `--pixels` plots the raw pixels of
the same images instead, the baseline every encoder should beat.
"""

import argparse
import io
import sys

import numpy as np
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE

from dul_jax import storage
from dul_jax.errors import UserError
from dul_jax.evaluators import probe
from dul_jax.train import loop
from dul_jax.train.evaluation import Evaluation
from dul_jax.train.state import eval_params


class PixelFeatures:
    """A task whose features are the raw pixels of its images."""

    def __init__(self, task):
        self.cfg = task.cfg

    @staticmethod
    def features(params, levels):
        return levels.reshape(levels.shape[0], -1).astype(np.float32)


def features_of(workdir: str, pixels: bool) -> tuple[np.ndarray, np.ndarray, str]:
    """(features (N, D), labels (N,), a title) of the run's eval split."""
    cfg = loop.load_config_of(workdir, [])
    setup, state = loop.restore_latest(cfg, workdir)
    with setup.context():
        x, y = probe.split_features(Evaluation(setup, 0),
                                    PixelFeatures(setup.task) if pixels else setup.task,
                                    eval_params(state), setup.spec.eval_split)
    what = 'pixels' if pixels else f'{cfg.task} ({cfg.model.get("method", cfg.task)}) features'
    return x, y, f'{setup.spec.name} {setup.spec.eval_split}: {what}, step {int(state.step)}'


def plot(x: np.ndarray, y: np.ndarray, title: str, path: str, seed: int) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    x = (x - x.mean(0)) / (x.std(0) + 1e-6)   # the probe's standardisation
    classes = int(y.max()) + 1
    embeddings = {'PCA': PCA(2, random_state=seed).fit_transform(x),
                  't-SNE': TSNE(2, init='pca', random_state=seed).fit_transform(x)}
    figure = Figure(figsize=(11, 5.5))
    FigureCanvasAgg(figure)
    for i, (name, e) in enumerate(embeddings.items()):
        axes = figure.add_subplot(1, 2, i + 1)
        points = axes.scatter(e[:, 0], e[:, 1], c=y, s=3, vmin=-0.5, vmax=classes - 0.5,
                              cmap='tab10' if classes <= 10 else 'tab20')
        axes.set_title(name)
        axes.set_xticks([])
        axes.set_yticks([])
    figure.colorbar(points, ax=figure.axes, ticks=range(classes), label='class')
    figure.suptitle(title)
    buffer = io.BytesIO()
    figure.savefig(buffer, format='png', dpi=90)
    storage.write_atomic(path, buffer.getvalue())
    return path


def main(argv) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--workdir', required=True)
    p.add_argument('--out', required=True, help='the PNG to write')
    p.add_argument('--pixels', action='store_true', help='raw pixels instead of the features')
    p.add_argument('--seed', type=int, default=0)
    args = p.parse_args(argv)
    try:
        x, y, title = features_of(args.workdir, args.pixels)
    except UserError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    path = plot(x, y, title, args.out, args.seed)
    print(f'{len(x)} examples, {x.shape[1]} features: wrote {path}')
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
