"""Sampling throughput of a trained run: images (or sequences) per second from its latest
checkpoint, after compilation, on whatever device this process sees.

Times the family's `sample_images` (flows, VAEs, diffusion: one batch of `--num` images) or, for
the other families that generate, its `sample` (what `dul-jax sample` draws: autoregressive models
decode position by position). Prints the compile call and the median of `--repeats` timed calls.

    python benchmarks/sampling.py --workdir runs/glow_mnist --num 256
"""

import argparse
import statistics
import time

import jax

from dul_jax.tasks.capabilities import Generates, SampleImages
from dul_jax.train import loop
from dul_jax.train.state import eval_params


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--workdir', required=True)
    parser.add_argument('--num', type=int, default=256, help='samples per call')
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--config', action='append', default=[], help='config overrides')
    args = parser.parse_args()
    cfg = loop.load_config_of(args.workdir, args.config)
    setup, state = loop.restore_latest(cfg, args.workdir)
    task, params = setup.task, eval_params(state)
    if not isinstance(task, SampleImages | Generates):
        raise SystemExit(f'task "{task.name}" does not generate; there is nothing to time.')
    method = 'sample_images' if isinstance(task, SampleImages) else 'sample'
    draw = getattr(task, method)

    def timed(seed: int) -> float:
        start = time.perf_counter()
        jax.block_until_ready(draw(params, jax.random.key(seed), args.num))
        return time.perf_counter() - start

    with setup.context():
        first = timed(0)
        times = [timed(1 + i) for i in range(args.repeats)]
    median = statistics.median(times)
    print(f'{task.name} ({cfg.model.get("kind", "")}) on {setup.spec.name}, step '
          f'{int(state.step)}, {jax.devices()[0].platform}: {method}({args.num}) first call '
          f'(compile + run) {first:.2f} s, then median {median:.3f} s of {args.repeats}: '
          f'{args.num / median:,.1f} samples/s')


if __name__ == '__main__':
    main()
