"""A two-stage VQ-VAE: export a trained VQ-VAE's codes, train the autoregressive prior on them,
and draw images as prior -> decoder.

  dul-jax train --config experiments/configs/vqvae_mnist.py --workdir runs/vqvae_mnist
  python experiments/vqvae_two_stage.py export-codes --vqvae runs/vqvae_mnist \
      [--out runs/vqvae_mnist/codes]
  dul-jax train --config experiments/configs/vqvae_prior.py --workdir runs/vqvae_prior \
      --config.data.name=arrays:runs/vqvae_mnist/codes
  python experiments/vqvae_two_stage.py sample --vqvae runs/vqvae_mnist \
      --prior runs/vqvae_prior [--num 64] [--out samples.png] [--classifier DIR]

`export-codes` writes the code grids of the VQ-VAE's train and eval splits (levels = codes, with
the labels) as an `arrays:` data set, which the unchanged `autoregressive` task trains on.
`sample` draws `num` code grids from the prior (its sample.* settings), decodes each pixel value
to the decoder's most likely level, and writes the decoder's means as a PNG grid; with
--classifier (experiments/domain_fid.py train-classifier) it also prints the domain FID,
precision and recall of the decoded images against the eval split, and writes them to
PRIOR/two_stage_fid.json.
"""

import argparse
import json
import os
import sys
import time

import jax.numpy as jnp
import numpy as np

import dul_jax
from dul_jax import data, images
from dul_jax.errors import UserError


def export_command(args) -> None:
    vq = dul_jax.load_run(args.vqvae)
    out = args.out or os.path.join(args.vqvae, 'codes')
    start = time.time()
    splits = {split: data.eval_batches(vq.cfg.data, 256, split=split)
              for split in (vq.spec.train_split, vq.spec.eval_split)}
    with vq.setup.context():
        info = vq.task.export_codes(vq.params, splits, out)
    print(f'codes of {vq.spec.name} at step {vq.step}: {info["splits"]} grids of '
          f'{info["shape"][:2]}, {info["num_levels"]} codes, written to {out} in '
          f'{time.time() - start:.0f}s; train the prior with --config.data.name=arrays:{out}')


def two_stage_samples(vq, prior, num: int, seed: int = 0):
    """(levels (num, H, W, C), means in [0, 1]) of `num` images: code grids from the prior run,
    decoded by the VQ-VAE run."""
    if prior.spec.num_levels != vq.cfg.model.num_codes or \
            tuple(prior.spec.shape[:2]) != vq.task.grid_shape:
        raise UserError(f'the prior models {prior.spec.shape[:2]} grids of {prior.spec.num_levels} '
                        f'levels, but the VQ-VAE has {vq.task.grid_shape} grids of '
                        f'{vq.cfg.model.num_codes} codes; pass the prior trained on its codes.')
    codes = prior.sample(num, seed)['samples'][..., 0]
    with vq.setup.context():
        levels, means = vq.task.images_from_codes(vq.params, jnp.asarray(codes, jnp.int32))
    return np.asarray(levels), np.asarray(means)


def sample_command(args) -> None:
    vq, prior = dul_jax.load_run(args.vqvae), dul_jax.load_run(args.prior)
    start = time.time()
    levels, means = two_stage_samples(vq, prior, args.num, args.seed)
    out = args.out or os.path.join(args.prior, 'two_stage_samples.png')
    cols = min(args.num, 10)
    images.save_grid(means, out, 2, cols=cols, scale=max(1, 64 // means.shape[1]))
    print(f'{args.num} two-stage samples in {time.time() - start:.0f}s: {out}')
    if args.classifier:
        from dul_jax.metrics import domain_classifier
        result = domain_classifier.score(args.classifier, vq.cfg.data, levels, seed=args.seed)
        result.update(vqvae_step=vq.step, prior_step=prior.step)
        print(f'domain FID on {vq.spec.name} ({args.num} images; classifier test accuracy '
              f'{result["classifier_test_accuracy"]:.3f}):')
        for name in ('real', 'samples', 'gaussian'):
            r = result[name]
            print(f'  {name:10s} FID {r["fid"]:9.3f} precision {r["precision"]:.3f} '
                  f'recall {r["recall"]:.3f}')
        with open(os.path.join(args.prior, 'two_stage_fid.json'), 'w') as f:
            json.dump(result, f, indent=2, default=list)


def main(argv) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    sub = p.add_subparsers(dest='command', required=True)
    e = sub.add_parser('export-codes')
    e.add_argument('--vqvae', required=True)
    e.add_argument('--out', default='')
    s = sub.add_parser('sample')
    s.add_argument('--vqvae', required=True)
    s.add_argument('--prior', required=True)
    s.add_argument('--num', type=int, default=64)
    s.add_argument('--seed', type=int, default=0)
    s.add_argument('--out', default='')
    s.add_argument('--classifier', default='')
    args = p.parse_args(argv)
    try:
        if args.command == 'export-codes':
            export_command(args)
        else:
            sample_command(args)
    except UserError as err:
        print(f'error: {err}', file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
