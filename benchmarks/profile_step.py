"""Where a train step's time goes: trace a few steps with jax.profiler and sum the device time of
each XLA op (GPU kernels, or the CPU client's fusions), largest first.

    python benchmarks/profile_step.py --config C [--synthetic] [--steps 5] [--top 25]
        [--trace-dir DIR] [--json F] [--config.KEY=VALUE ...]

Prints the median step time, the busy time the trace saw per step, then the top ops with their
share and a total per category (matmul, attention, fusion, copy/transpose, collectives, other).
The raw trace stays in --trace-dir for TensorBoard/Perfetto.
"""

import argparse
import collections
import glob
import json
import re
import statistics
import sys
import tempfile

import jax
from jax.profiler import ProfileData
from train_step import compile_step, run_steps

from dul_jax import config as config_lib
from dul_jax import runtime

# Substrings of op/kernel names -> category; the first match wins.
CATEGORIES = (
    ('attention', ('cudnn', 'flash', 'fmha', 'attention')),
    ('matmul', ('gemm', 'cublas', 'nvjet', 'dot', 'matmul', 'xmma', 'cutlass', 'convolution')),
    # XLA:CPU hands dots (with fused elementwise producers/consumers) to YNNPACK as `ynn_fusion`
    ('matmul (ynnpack)', ('ynn_',)),
    ('collective', ('all-reduce', 'all-gather', 'reduce-scatter', 'nccl', 'all-to-all')),
    ('copy/transpose', ('copy', 'transpose', 'memcpy', 'memset')),
    ('fusion', ('fusion', 'loop_', 'input_', 'reduce', 'triton')),
)
# Host-side bookkeeping events on CPU threads that are not work.
def category(name: str) -> str:
    lower = name.lower()
    for label, needles in CATEGORIES:
        if any(n in lower for n in needles):
            return label
    return 'other'


def op_times(trace_dir: str, hlo_ops: set[str]) -> dict[str, list[float]]:
    """Op name -> durations (s) from the newest trace: kernels on GPU/TPU device planes (the
    'XLA Ops' line where present), else the CPU's events named after one of `hlo_ops` (the
    step's HLO instructions) on any thread: XLA's worker threads, and the calling thread, which
    runs some of a step's ops where jax's asynchronous dispatch is off."""
    path = max(glob.glob(f'{trace_dir}/**/*.xplane.pb', recursive=True))
    data = ProfileData.from_file(path)
    times = collections.defaultdict(list)
    devices = [p for p in data.planes if p.name.startswith('/device:')]
    for plane in devices:
        lines = list(plane.lines)
        ops = [ln for ln in lines if ln.name == 'XLA Ops'] or \
              [ln for ln in lines if ln.name.startswith('Stream')]
        for line in ops:
            for event in line.events:
                times[event.name].append(event.duration_ns * 1e-9)
    if not devices:
        host = next(p for p in data.planes if p.name == '/host:CPU')
        for line in host.lines:
            for event in line.events:
                if event.duration_ns and event.name in hlo_ops:
                    times[event.name].append(event.duration_ns * 1e-9)
    return times


def profile(cfg, steps: int, synthetic: bool, trace_dir: str) -> dict:
    setup, state, batch, compiled, _ = compile_step(cfg, synthetic)
    with setup.context():
        state, _ = run_steps(compiled, state, batch, 3)  # warm-up
        jax.profiler.start_trace(trace_dir)
        state, times = run_steps(compiled, state, batch, steps)
        jax.profiler.stop_trace()
    ops = op_times(trace_dir, set(re.findall(r'%([\w.\-]+) = ', compiled.as_text())))
    total = {name: sum(d) / steps for name, d in ops.items()}
    busy = sum(total.values())
    by_category = collections.Counter()
    for name, seconds in total.items():
        by_category[category(name)] += seconds
    top = sorted(total.items(), key=lambda kv: -kv[1])
    return {'step_s_median': statistics.median(times), 'busy_s_per_step': busy,
            'categories': dict(by_category.most_common()),
            'ops': [{'name': n, 's_per_step': s, 'calls_per_step': len(ops[n]) / steps,
                     'category': category(n)} for n, s in top]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--config', required=True)
    parser.add_argument('--steps', type=int, default=5)
    parser.add_argument('--top', type=int, default=25)
    parser.add_argument('--synthetic', action='store_true')
    parser.add_argument('--trace-dir', default=None)
    parser.add_argument('--json')
    args, extra = parser.parse_known_args(argv)
    overrides = [a[len('--config.'):] for a in extra if a.startswith('--config.')]
    cfg = config_lib.load_config(args.config, overrides)
    runtime.start(cfg)
    trace_dir = args.trace_dir or tempfile.mkdtemp(prefix='dul_jax_trace_')
    result = profile(cfg, args.steps, args.synthetic, trace_dir)
    step, busy = result['step_s_median'], result['busy_s_per_step']
    print(f'device {jax.devices()[0].device_kind}; median step {step * 1e3:.2f} ms; '
          f'op time per step {busy * 1e3:.2f} ms (trace in {trace_dir})')
    print('per category (ms/step, share of op time):')
    for label, seconds in result['categories'].items():
        print(f'  {label:<15} {seconds * 1e3:9.3f}  {seconds / busy:6.1%}')
    print(f'top {args.top} ops:')
    for op in result['ops'][:args.top]:
        print(f"  {op['s_per_step'] * 1e3:9.3f} ms  {op['s_per_step'] / busy:6.1%}  "
              f"x{op['calls_per_step']:<5g} {op['category']:<14} {op['name'][:90]}")
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == '__main__':
    sys.exit(main())
