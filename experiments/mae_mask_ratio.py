"""Masking-ratio ablation for the MAE on 8x8 digits: ratios 0.25, 0.5, 0.75 and 0.9.

Every ratio trains the same model (experiments/configs/mae_digits.py) for the same steps at the
same batch through the normal trainer, then reports
  - eval loss at its own ratio, and at a common ratio of 0.75 (the same fixed masks for all),
  - the linear-probe and cosine 20-NN test accuracy on frozen, unmasked encoder features,
with two reference rows: the randomly initialised encoder on the same probes, and raw pixels.
Writes table.md, results.json and mask_ratio.png to experiments/results/mae_mask_ratio/.

  nice -n 10 .venv/bin/python experiments/mae_mask_ratio.py [--steps 1000 --batch 64]
      [--config.KEY=VALUE ...]   # reruns resume: finished runs are only evaluated again
"""

import argparse
import json
import os
import time

import matplotlib.pyplot as plt  # headless: matplotlib falls back to the Agg backend
import numpy as np

from dul_jax import config as config_lib
from dul_jax import data, evaluators
from dul_jax.metrics import probes
from dul_jax.models.mae import num_masked
from dul_jax.train import loop
from dul_jax.train.evaluation import Evaluation
from dul_jax.train.loop import train
from dul_jax.train.setup import prepare

HERE = os.path.dirname(os.path.abspath(__file__))
CONFIG = os.path.join(HERE, 'configs', 'mae_digits.py')
RESULTS = os.path.join(HERE, 'results', 'mae_mask_ratio')
RATIOS = (0.25, 0.5, 0.75, 0.9)
COMMON_RATIO = 0.75


def load(overrides, ratio):
    cfg = config_lib.load_config(CONFIG, overrides)
    cfg.model.mask_ratio = ratio
    return cfg


def loss_at(cfg, state, ratio):
    """Eval loss of `state` with masks drawn at `ratio` (the params do not depend on it)."""
    cfg = config_lib.from_json(config_lib.to_json(cfg))
    cfg.model.mask_ratio = ratio
    return loop.evaluate(prepare(cfg), state)['loss']


def random_encoder_row(overrides):
    cfg = load(overrides, COMMON_RATIO)
    setup = prepare(cfg)
    state = setup.init_state(cfg.seed)
    with setup.context():
        metrics = evaluators.evaluate(Evaluation(setup), state.params)
    return {'ratio': None, 'loss_own': None, 'loss_common': loss_at(cfg, state, COMMON_RATIO),
            'probe_accuracy': metrics['probe_accuracy'], 'knn_accuracy': metrics['knn_accuracy'],
            'train_s': 0.0}


def raw_pixel_row(overrides):
    cfg = load(overrides, COMMON_RATIO)
    spec = data.describe(cfg.data)

    def split(name):
        batches = list(data.eval_batches(cfg.data, 256, split=name))
        keep = np.concatenate([b['mask'] for b in batches]) > 0
        x = np.concatenate([b['image'].reshape(len(b['image']), -1) for b in batches])[keep]
        return x.astype(np.float64), np.concatenate([b['label'] for b in batches])[keep]

    train_xy, test_xy = split(spec.train_split), split(spec.eval_split)
    return {'ratio': None, 'loss_own': None, 'loss_common': None,
            'probe_accuracy': probes.linear_probe_accuracy(*train_xy, *test_xy),
            'knn_accuracy': probes.knn_accuracy(*train_xy, *test_xy, k=cfg.eval.probe.knn_k),
            'train_s': 0.0}


def trained_row(overrides, ratio, workdir):
    cfg = load(overrides, ratio)
    start = time.perf_counter()
    final = train(cfg, workdir)
    seconds = time.perf_counter() - start
    if not final:  # SIGTERM: the trainer saved a checkpoint, and a rerun resumes every run
        raise SystemExit(f'{workdir} stopped before the end; rerun the same command to resume.')
    _, state = loop.load_run(cfg, workdir)
    common = loss_at(cfg, state, COMMON_RATIO)
    return {'ratio': ratio, 'loss_own': final['loss'], 'loss_common': common,
            'probe_accuracy': final['probe_accuracy'], 'knn_accuracy': final['knn_accuracy'],
            'train_s': seconds}


def fmt(value, spec):
    return '-' if value is None else format(value, spec)


def write_table(rows, random_row, pixel_row, cfg, steps, path):
    m = cfg.model
    title = (f'# MAE masking ratio on digits ({steps} steps, batch {cfg.train.batch_size}, '
             f'patch {m.patch_size}: 16 patches; encoder {m.num_layers}x{m.embed_dim}, '
             f'decoder {m.decoder_layers}x{m.decoder_embed_dim}, probe on {m.probe_pool} '
             'features)')
    note = ('Loss: MSE on masked patches, pixels in [0, 1] (norm_pix_loss '
            f'{m.norm_pix_loss}). "own" masks at the training ratio; "@0.75" masks every model '
            'at 0.75 with the same fixed masks. Accuracies on the 297 test digits; probe: '
            'logistic regression on standardised features of the 1,500 train digits; k-NN: '
            'cosine, k=20.')
    header = ('| encoder | mask ratio | masked | loss (own) | loss @0.75 | linear probe '
              '| 20-NN | run time |')
    lines = [title, '', note, '', header, '|---|---|---|---|---|---|---|---|']
    for r in rows:
        lines.append(f'| MAE | {r["ratio"]} | {num_masked(16, r["ratio"])}/16 | '
                     f'{r["loss_own"]:.4f} | {r["loss_common"]:.4f} | '
                     f'{r["probe_accuracy"]:.3f} | {r["knn_accuracy"]:.3f} | '
                     f'{r["train_s"]:.0f} s |')
    lines.append(f'| random init | - | - | - | {fmt(random_row["loss_common"], ".4f")} | '
                 f'{random_row["probe_accuracy"]:.3f} | {random_row["knn_accuracy"]:.3f} | - |')
    lines.append(f'| raw pixels (no encoder) | - | - | - | - | '
                 f'{pixel_row["probe_accuracy"]:.3f} | {pixel_row["knn_accuracy"]:.3f} | - |')
    text = '\n'.join(lines) + '\n'
    with open(path, 'w') as f:
        f.write(text)
    return text


def plot(rows, random_row, pixel_row, path):
    ratios = [r['ratio'] for r in rows]
    fig, (acc, loss) = plt.subplots(1, 2, figsize=(10, 4))
    acc.plot(ratios, [r['probe_accuracy'] for r in rows], 'o-', label='MAE linear probe')
    acc.plot(ratios, [r['knn_accuracy'] for r in rows], 's-', label='MAE 20-NN')
    for row, name, style in ((random_row, 'random init', '--'), (pixel_row, 'raw pixels', ':')):
        acc.axhline(row['probe_accuracy'], color='C0', ls=style, lw=1,
                    label=f'{name} linear probe')
        acc.axhline(row['knn_accuracy'], color='C1', ls=style, lw=1, label=f'{name} 20-NN')
    acc.set(xlabel='mask ratio', ylabel='test accuracy', title='frozen-encoder accuracy',
            xticks=ratios)
    acc.legend(fontsize=7)
    loss.plot(ratios, [r['loss_own'] for r in rows], 'o-', label='masked at its own ratio')
    loss.plot(ratios, [r['loss_common'] for r in rows], 's-', label='masked at 0.75')
    loss.set(xlabel='mask ratio', ylabel='MSE on masked patches', xticks=ratios,
             title='reconstruction loss (test)')
    loss.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--steps', type=int, default=1000)
    p.add_argument('--batch', type=int, default=64)
    p.add_argument('--workdir', default='runs/mae_mask_ratio', help='one run per ratio inside')
    p.add_argument('--results', default=RESULTS)
    args, extra = p.parse_known_args()
    overrides = [o[len('--config.'):] for o in extra if o.startswith('--config.')]
    overrides += [f'train.steps={args.steps}', f'train.batch_size={args.batch}',
                  'train.eval_every=0', 'train.sample_every=0', f'train.ckpt_every={args.steps}']
    os.makedirs(args.results, exist_ok=True)
    rows = []
    for ratio in RATIOS:
        rows.append(trained_row(overrides, ratio, os.path.join(args.workdir, f'ratio_{ratio}')))
        print(f'RESULT mask ratio {ratio}: {rows[-1]}', flush=True)
    random_row, pixel_row = random_encoder_row(overrides), raw_pixel_row(overrides)
    print(f'RESULT random init: {random_row}\nRESULT raw pixels: {pixel_row}', flush=True)
    cfg = load(overrides, COMMON_RATIO)
    table = write_table(rows, random_row, pixel_row, cfg, args.steps,
                os.path.join(args.results, 'table.md'))
    plot(rows, random_row, pixel_row, os.path.join(args.results, 'mask_ratio.png'))
    with open(os.path.join(args.results, 'results.json'), 'w') as f:
        json.dump({'steps': args.steps, 'overrides': overrides, 'mae': rows,
                   'random_init': random_row, 'raw_pixels': pixel_row}, f, indent=2)
    print(table)


if __name__ == '__main__':
    main()
