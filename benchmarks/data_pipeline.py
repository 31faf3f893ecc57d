"""Does data loading keep up? The training pipeline's examples/s alone, against the train step's.

    python benchmarks/data_pipeline.py --config experiments/configs/NAME.py [--batches 200]
        [--step-batches 10] [--config.KEY=VALUE ...]

Times `--batches` batches from the real training iterator (grain, shuffled, local data set: what
`dul-jax train` reads), then the real compiled train step on real batches, and prints both rates
and their ratio (the target is at least 10x).
"""

import argparse
import statistics
import sys
import time

import jax

from dul_jax import config as config_lib
from dul_jax import data
from dul_jax.train.setup import prepare


def pipeline_rate(cfg, batches: int) -> float:
    """Examples/s of the training iterator (after its first batch, which starts its threads)."""
    iterator = data.train_iterator(cfg.data, cfg.train.batch_size, cfg.seed)
    next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return batches * cfg.train.batch_size / (time.perf_counter() - start)


def step_rate(cfg, steps: int) -> float:
    """Examples/s of the jitted train step alone, on batches already on the device."""
    setup = prepare(cfg)
    iterator = data.train_iterator(cfg.data, cfg.train.batch_size, cfg.seed)
    batches = [setup.put_train_batch(next(iterator)) for _ in range(steps + 1)]
    with setup.context():
        state = setup.to_step_form(setup.init_state(cfg.seed))
        step = setup.train_step()
        state, metrics = step(state, batches[0])
        jax.block_until_ready(metrics['loss'])
        times = []
        for batch in batches[1:]:
            start = time.perf_counter()
            state, metrics = step(state, batch)
            jax.block_until_ready(metrics['loss'])
            times.append(time.perf_counter() - start)
    return cfg.train.batch_size / statistics.median(times)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--config', required=True)
    parser.add_argument('--batches', type=int, default=200)
    parser.add_argument('--step-batches', type=int, default=10)
    args, extra = parser.parse_known_args(argv)
    overrides = [a[len('--config.'):] for a in extra if a.startswith('--config.')]
    cfg = config_lib.load_config(args.config, overrides)
    pipeline = pipeline_rate(cfg, args.batches)
    step = step_rate(cfg, args.step_batches)
    print(f'{args.config}: data {cfg.data.name}, batch {cfg.train.batch_size}; pipeline '
          f'{pipeline:,.0f} examples/s, train step {step:,.0f} examples/s on '
          f'{jax.devices()[0].device_kind}: {pipeline / step:,.1f}x')
    return 0


if __name__ == '__main__':
    sys.exit(main())
