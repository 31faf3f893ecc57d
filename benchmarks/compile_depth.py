"""Compile seconds of the GPT train step against depth, scanned and unrolled, for the host CPU and
for TPU topologies ahead of time (libtpu compiles on this host; nothing runs).

    JAX_PLATFORMS=cpu python benchmarks/compile_depth.py [--layers 2 8 32] \
        [--targets cpu v5e:2x2] [--json]

The model is benchmarks/configs/gpt_125m_bf16.py narrowed to width 256, 4 heads, MLP 1024,
context 256 and vocabulary 256 (synthetic tokens). Each figure is lowering plus compiling the
train step for abstract inputs (`dul_jax.sharding.inspect.compiled_train_step`), with the
persistent compilation cache off.
"""

import argparse
import json
import os
import sys
import time

import jax
from train_step import synthetic_spec

from dul_jax import config as config_lib
from dul_jax.sharding.inspect import compiled_train_step
from dul_jax.train.setup import prepare

CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configs', 'gpt_125m_bf16.py')
MODEL = ['data.seq_len=256', 'data.synthetic_vocab=256', 'model.embed_dim=256',
         'model.num_heads=4', 'model.mlp_dim=1024', 'mesh.data=-1']
MODES = {'scan': 1, 'unroll': 0}   # model.scan_unroll


def target_devices(target: str):
    if target == 'cpu':
        return jax.devices('cpu')
    from jax.experimental import topologies
    return topologies.get_topology_desc(platform='tpu', topology_name=target).devices


def compile_seconds(devices, layers: int, unroll: int) -> float:
    cfg = config_lib.load_config(CONFIG, MODEL + [f'model.num_layers={layers}',
                                                  f'model.scan_unroll={unroll}'])
    setup = prepare(cfg, devices=devices, spec=synthetic_spec(cfg))
    start = time.perf_counter()
    compiled_train_step(setup)
    return time.perf_counter() - start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--layers', type=int, nargs='+', default=[2, 8, 32])
    parser.add_argument('--targets', nargs='+', default=['cpu', 'v5e:2x2'])
    parser.add_argument('--json', action='store_true', help='print the rows as JSON instead')
    args = parser.parse_args(argv)
    jax.config.update('jax_enable_compilation_cache', False)   # every compile a real one
    rows = []
    if not args.json:
        print(f'{"target":<10} {"layers":>6} {"stack":<7} {"compile s":>9}')
    for target in args.targets:
        devices = target_devices(target)
        for layers in args.layers:
            for mode, unroll in MODES.items():
                rows.append({'target': target, 'layers': layers, 'stack': mode,
                             'compile_s': round(compile_seconds(devices, layers, unroll), 2)})
                if not args.json:
                    row = rows[-1]
                    print(f'{target:<10} {layers:>6} {mode:<7} {row["compile_s"]:>9.2f}',
                          flush=True)
    if args.json:
        print(json.dumps({'jax': jax.__version__, 'rows': rows}, indent=2))
    return 0


if __name__ == '__main__':
    sys.exit(main())
