"""The table and plot of a µP learning-rate transfer sweep
(experiments/sweeps/mup_transfer_digits.py): final eval loss against learning rate for each
width, in the standard parametrization and in µP, and how far each width's best learning rate
lies from the base width's (in octaves: factors of 2).

    python experiments/mup_transfer.py runs/mup_transfer_digits [--out DIR]

Writes DIR/table.md (the table) and DIR/lr_transfer.png (the plot), default
experiments/results/mup_transfer, and prints the table.
"""

import argparse
import collections
import math
import os

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt

from dul_jax.scaling import fit
from dul_jax.scaling.report import load_results

NAMES = {'sp': 'standard', 'mup': 'µP'}


def curves(results):
    """({parametrization: {width: {lr: mean loss over seeds}}}, the same with the seeds'
    losses) from the sweep's rows (a diverged run's loss: inf)."""
    seeds = collections.defaultdict(lambda: collections.defaultdict(
        lambda: collections.defaultdict(list)))
    for r in results:
        o = r['overrides']
        kind = 'mup' if o['model.mup_base_width'] else 'sp'
        loss = float('inf') if r.get('diverged') or r.get('loss') is None else r['loss']
        seeds[kind][o['model.embed_dim']][o['optim.lr']].append(loss)
    base = min(seeds['mup'])   # at the base width µP is the standard model: pool their seeds
    for lr, losses in seeds['sp'].get(base, {}).items():
        if len(losses) > len(seeds['mup'][base][lr]):
            seeds['mup'][base][lr] = losses
    means = {kind: {w: {lr: sum(v) / len(v) for lr, v in lrs.items()} for w, lrs in widths.items()}
             for kind, widths in seeds.items()}
    return means, seeds


def table(data, seeds) -> str:
    lrs = sorted({lr for widths in data.values() for lrs in widths.values() for lr in lrs})
    lines = ['| parametrization | width | ' + ' | '.join(f'lr 2^{math.log2(lr):.0f}' for lr in lrs)
             + ' | best lr | off the base\'s best | fitted best log2 lr | fitted, off the base |',
             '|---|---|' + '---|' * len(lrs) + '---|---|---|---|']
    for kind in ('sp', 'mup'):
        widths = sorted(data[kind])
        best = {w: min(data[kind][w], key=data[kind][w].get) for w in widths}
        for w in widths:
            cells = [_cell(data[kind][w].get(lr, float('nan')), seeds[kind][w][lr],
                           lr == best[w]) for lr in lrs]
            shift = math.log2(best[w] / best[widths[0]])
            fitted = fit.best_log2_lr(data[kind][w])
            fitted_shift = fitted - fit.best_log2_lr(data[kind][widths[0]])
            lines.append(f'| {NAMES[kind]} | {w} | ' + ' | '.join(cells) +
                         f' | 2^{math.log2(best[w]):.0f} | {shift:+.0f} octave(s) | '
                         f'{fitted:.2f} | {fitted_shift:+.2f} |')
    return '\n'.join(lines)


def _cell(mean, losses, best) -> str:
    """The mean loss, bold where best; with several seeds, their count and half-range."""
    text = f'**{mean:.4f}**' if best else f'{mean:.4f}'
    if len(losses) > 1:
        text += f' ±{(max(losses) - min(losses)) / 2:.4f} ({len(losses)} seeds)'
    return text


def plot(data, path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, kind in zip(axes, ('sp', 'mup'), strict=True):
        for w in sorted(data[kind]):
            lrs = sorted(data[kind][w])
            ax.plot(lrs, [data[kind][w][lr] for lr in lrs], marker='o', label=f'width {w}')
        ax.set_xscale('log', base=2)
        ax.set_xlabel('learning rate')
        ax.set_title(NAMES[kind])
        ax.grid(alpha=0.3)
    axes[0].set_ylabel('final eval loss (nats/pixel)')
    axes[1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('workdir', help='the sweep workdir (its results.jsonl)')
    p.add_argument('--out', default='experiments/results/mup_transfer')
    args = p.parse_args()
    data, seeds = curves(load_results(os.path.join(args.workdir, 'results.jsonl')))
    os.makedirs(args.out, exist_ok=True)
    text = table(data, seeds)
    with open(os.path.join(args.out, 'table.md'), 'w') as f:
        f.write(text + '\n')
    plot(data, os.path.join(args.out, 'lr_transfer.png'))
    print(text)


if __name__ == '__main__':
    main()
