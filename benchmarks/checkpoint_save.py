"""How long a checkpoint save takes the first time and again, with orbax's replica-parallel saving
on (its default off GPUs) and off, for a state of N replicated arrays on this host's devices.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu \\
        python benchmarks/checkpoint_save.py [--arrays 100] [--parallel on|off]

Replica-parallel saving slices each replicated array once per device so every replica writes a
part; each slice is a compiled op per shape and device, paid on the first save of a process. Run
once per setting (`Checkpointer(replica_parallel=...)`, `train.ckpt_replica_parallel`); prints
the first and second save and the first restore, through dul_jax's Checkpointer.
"""

import argparse
import tempfile
import time

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--arrays', type=int, default=100)
    p.add_argument('--parallel', choices=('on', 'off'), default='on')
    args = p.parse_args()
    from dul_jax.train import checkpoint
    parallel = args.parallel == 'on'
    mesh = jax.make_mesh((jax.device_count(),), ('data',))
    replicated = NamedSharding(mesh, P())
    rng = np.random.default_rng(0)
    tree = {f'a{i}': jax.device_put(rng.random((32 + i, 16), np.float32), replicated)
            for i in range(args.arrays)}
    checkpoint.digest(tree)   # its one compile is not the save's
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding),
                            tree)
    for attempt in ('first', 'second'):
        folder = tempfile.mkdtemp()
        ckpt = checkpoint.Checkpointer(folder, async_save=False, replica_parallel=parallel)
        start = time.perf_counter()
        ckpt.save(1, tree)
        ckpt.close()
        saved = time.perf_counter() - start
        ckpt = checkpoint.Checkpointer(folder, async_save=False)
        start = time.perf_counter()
        ckpt.restore(abstract)
        ckpt.close()
        print(f'replica-parallel {args.parallel}, {args.arrays} arrays on {jax.device_count()} '
              f'devices: {attempt} save {saved:.2f} s, restore {time.perf_counter() - start:.2f} s')


if __name__ == '__main__':
    main()
