"""Domain FID: train the feature classifier of a data set, and score a run's samples with it.

  python experiments/domain_fid.py train-classifier --data digits --out runs/fid_classifier_digits
  python experiments/domain_fid.py score --workdir runs/ddpm_unet_digits \
      --classifier runs/fid_classifier_digits [--num N] [--config.sample.guidance=2 ...]

`score` samples N images (default: as many as the eval split has) from the run's latest checkpoint
(EMA params, the run's sampler unless overridden) and prints the Frechet distance, precision and
recall against the eval split, beside held-out real images and a Gaussian fitted to the pixels.
The numbers are written to WORKDIR/domain_fid_guidance_W.json (W: the guidance scale of a
diffusion run; WORKDIR/domain_fid.json for other families).
"""

import argparse
import json
import os
import sys
import time

import jax
import ml_collections
import numpy as np

from dul_jax.config import base_config
from dul_jax.errors import UserError
from dul_jax.metrics import domain_classifier
from dul_jax.train import loop
from dul_jax.train.state import eval_params


def train_command(args) -> None:
    data_cfg = base_config().data
    data_cfg.name = args.data
    if args.tfds_dir:
        data_cfg.tfds_dir = args.tfds_dir
    start = time.time()
    _, params, info = domain_classifier.train_classifier(data_cfg, steps=args.steps)
    domain_classifier.save(args.out, params, info)
    print(f'classifier on {info["data"]}: test accuracy {info["test_accuracy"]:.4f} after '
          f'{info["steps"]} steps ({time.time() - start:.0f}s); saved to {args.out}')


def score_command(args, overrides) -> None:
    cfg = loop.load_config_of(args.workdir, overrides)
    setup, state = loop.restore_latest(cfg, args.workdir)
    num = args.num or setup.spec.num_eval
    start = time.time()
    with setup.context():
        samples = setup.task.sample_images(eval_params(state), jax.random.key(args.seed),
                                           num)
    sample_s = time.time() - start
    labels = setup.task.sample_labels(num)   # the classes asked for, if conditional
    result = domain_classifier.score(args.classifier, cfg.data, np.asarray(samples),
                                     seed=args.seed,
                                     labels=None if labels is None else np.asarray(labels))
    result.update(step=int(state.step), sample_s=sample_s,
                  sample=ml_collections.ConfigDict(cfg.sample).to_dict())
    print(f'domain FID on {setup.spec.name} ({num} images vs the {setup.spec.eval_split} split; '
          f'classifier test accuracy {result["classifier_test_accuracy"]:.3f}; sampling took '
          f'{sample_s:.0f}s):')
    print(f'  {"":28s} {"FID":>9s} {"precision":>10s} {"recall":>8s}')
    for name, label in (('real', 'real (held-out train)'), ('samples', f'{cfg.task} samples'),
                        ('gaussian', 'Gaussian fit to pixels')):
        r = result[name]
        print(f'  {label:28s} {r["fid"]:9.3f} {r["precision"]:10.3f} {r["recall"]:8.3f}')
    print(f'  classes the classifier sees in the samples: {result["samples"]["class_histogram"]}'
          + (f'; {result["samples"]["label_accuracy"]:.1%} of them the class asked for'
             if labels is not None else ''))
    guidance = cfg.sample.get('guidance')   # diffusion's classifier-free guidance scale
    name = 'domain_fid' + ('' if guidance is None else f'_guidance_{guidance:g}')
    path = os.path.join(args.workdir, name + '.json')
    with open(path, 'w') as f:
        json.dump(result, f, indent=2, default=list)


def main(argv) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    sub = p.add_subparsers(dest='command', required=True)
    t = sub.add_parser('train-classifier')
    t.add_argument('--data', default='digits')
    t.add_argument('--out', required=True)
    t.add_argument('--steps', type=int, default=2000)
    t.add_argument('--tfds_dir', default='')
    s = sub.add_parser('score')
    s.add_argument('--workdir', required=True)
    s.add_argument('--classifier', required=True)
    s.add_argument('--num', type=int, default=0)
    s.add_argument('--seed', type=int, default=0)
    args, extra = p.parse_known_args(argv)
    try:
        if args.command == 'train-classifier':
            train_command(args)
        else:
            bad = [e for e in extra if not e.startswith('--config.')]
            if bad:
                raise UserError(f'unrecognised argument "{bad[0]}"; set config values as '
                                '--config.KEY=VALUE.')
            score_command(args, [e[len('--config.'):] for e in extra])
    except UserError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
