"""Time the project's own train step for a config, and report MFU.

    python benchmarks/train_step.py --config experiments/configs/NAME.py [--config.KEY=VALUE ...]
        [--steps 20] [--warmup 3] [--synthetic]

Prints: device, parameters, compile time, median step time over `steps` timed steps after
`warmup` untimed ones, examples/s and tokens/s, peak memory, FLOPs per step (analytic for the
Transformer, and XLA's cost analysis for any model), and MFU against the device's peak
(dul_jax/train/mfu.py: a measured matmul peak on CPU, published bf16 peaks on accelerators).
`--synthetic` uses random batches of the data set's shape without reading the data set (for
machines without the data or TFDS). Like `dul-jax train`, it applies the config's `runtime.*`
settings at start (dul_jax/runtime.py). The CPU figures in benchmarks/README.md use the allocator
recipe: `benchmarks/cpu_env.sh python benchmarks/train_step.py ...`.
"""

import argparse
import json
import resource
import statistics
import sys
import time

import jax
import numpy as np

from dul_jax import config as config_lib
from dul_jax import runtime
from dul_jax.accounting import count_params, xla_flops
from dul_jax.data import DataSpec, synthetic
from dul_jax.train import mfu
from dul_jax.train.setup import prepare


def synthetic_spec(cfg) -> DataSpec:
    """The spec of the config's random data (`data.name='synthetic'`, dul_jax/data/synthetic.py),
    whatever data set the config names."""
    return synthetic.describe(cfg.data)


def random_batch(spec: DataSpec, batch_size: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    if spec.is_image:
        return {'image': rng.integers(0, spec.num_levels, (batch_size, *spec.shape), np.uint8),
                'label': rng.integers(0, max(spec.num_classes, 1), (batch_size,), np.int32)}
    return {'tokens': rng.integers(0, spec.num_levels, (batch_size, *spec.shape), np.int32)}


def peak_memory_bytes() -> tuple[int, str]:
    stats = jax.devices()[0].memory_stats() or {}
    if 'peak_bytes_in_use' in stats:
        return int(stats['peak_bytes_in_use']), 'device peak_bytes_in_use'
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, 'process max RSS'


def compile_step(cfg, synthetic: bool):
    """The project's own train step for cfg, compiled, with a state and one device batch."""
    spec = synthetic_spec(cfg) if synthetic else None
    setup = prepare(cfg, spec=spec)
    batch = setup.put_batch(random_batch(setup.spec, setup.process_batch_size, cfg.seed))
    with setup.context():
        state = setup.init_state(cfg.seed)
        start = time.perf_counter()
        compiled = setup.train_step().lower(state, batch).compile()
    return setup, state, batch, compiled, time.perf_counter() - start


def run_steps(compiled, state, batch, count: int):
    """`count` steps; returns the final state and each step's wall time (waits for every step)."""
    times = []
    for _ in range(count):
        start = time.perf_counter()
        state, metrics = compiled(state, batch)
        jax.block_until_ready(metrics['loss'])
        times.append(time.perf_counter() - start)
    return state, times


def benchmark(cfg, steps: int, warmup: int, synthetic: bool) -> dict:
    setup, state, batch, compiled, compile_s = compile_step(cfg, synthetic)
    with setup.context():
        state, times = run_steps(compiled, state, batch, warmup + steps)
    times = times[warmup:]
    step_s = statistics.median(times)
    params = count_params(state.params)
    tokens = cfg.train.batch_size * setup.task.example_size()
    devices = setup.mesh.size
    peak, peak_source = mfu.peak_flops_per_device()
    result = {
        'device': f'{jax.devices()[0].device_kind} x{devices}',
        'config_model': cfg.model.to_dict(), 'batch_size': cfg.train.batch_size,
        'example_size': setup.task.example_size(), 'params': params,
        'compile_s': compile_s, 'step_s_median': step_s,
        'step_s_min': min(times), 'step_s_max': max(times),
        'examples_per_s': cfg.train.batch_size / step_s, 'tokens_per_s': tokens / step_s,
        'xla_flops_per_step_per_device': xla_flops(compiled),
        'peak_flops_per_device': peak, 'peak_source': peak_source,
    }
    # MFU from the trainer's own count (dul_jax/train/mfu.py): analytic for the Transformer, else
    # XLA's count of the lowered step, the same on every backend. The compiled step's count above
    # is for reference: on GPU it misses cuBLAS/cuDNN calls, and it counts a scanned body once.
    flops, source = mfu.model_flops_per_step(setup, state, cfg.train.batch_size)
    result['model_flops_per_step'], result['flops_source'] = flops, source
    result['mfu'] = flops / step_s / (peak * devices) if flops else None
    result['peak_memory_bytes'], result['peak_memory_source'] = peak_memory_bytes()
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--config', required=True)
    parser.add_argument('--steps', type=int, default=20)
    parser.add_argument('--warmup', type=int, default=3)
    parser.add_argument('--synthetic', action='store_true')
    parser.add_argument('--json', help='also write the figures to this file')
    args, extra = parser.parse_known_args(argv)
    overrides = [a[len('--config.'):] for a in extra if a.startswith('--config.')]
    cfg = config_lib.load_config(args.config, overrides)
    runtime.start(cfg)
    result = benchmark(cfg, args.steps, args.warmup, args.synthetic)
    width = max(len(k) for k in result)
    for key, value in result.items():
        shown = f'{value:,.4g}' if isinstance(value, float) else value
        print(f'{key:<{width}}  {shown}')
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == '__main__':
    sys.exit(main())
