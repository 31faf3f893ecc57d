"""Forward + backward time of each op in dul_jax/ops with each of its implementations.

    python benchmarks/ops.py [--repeats 10] [--batch 16 --length 256 --width 256 --heads 4
        --mlp 1024 --vocab 256] [--dtype float32]

Defaults: the GPT CPU target's shapes (benchmarks/configs/gpt_cpu_target.py), one layer's worth
of each op. Each implementation is jitted as value and VJP of a cotangent of ones; prints the
best of `repeats` calls after 2 warm-up calls, and what `auto` resolves to on this backend. The CPU
figures in benchmarks/README.md use the allocator recipe, as train_step.py's do:
`benchmarks/cpu_env.sh python benchmarks/ops.py ...`.
"""

import argparse
import time

import jax
import jax.numpy as jnp

from dul_jax import ops
from dul_jax.ops.attention import attention
from dul_jax.ops.cross_entropy import categorical_nll
from dul_jax.ops.gelu import gelu
from dul_jax.ops.matmul import matmul
from dul_jax.ops.positions import add_positions


def cases(a, dtype):
    """op -> (function of (impl, *args), float args, other args)."""
    keys = iter(jax.random.split(jax.random.key(0), 16))
    normal = lambda *shape: jax.random.normal(next(keys), shape, dtype)
    b, t, d, h, m = a.batch, a.length, a.width, a.heads, a.mlp
    return {
        'attention': (lambda impl, q, k, v: attention(q, k, v, True, impl=impl),
                      [normal(b, t, h, d // h) for _ in range(3)], []),
        'matmul': (lambda impl, x, w1, w2: matmul(matmul(x, w1, impl=impl), w2, impl=impl),
                   [normal(b, t, d), normal(d, m) * d ** -0.5, normal(m, d) * m ** -0.5], []),
        'gelu': (lambda impl, x: gelu(x, impl=impl), [normal(b, t, m)], []),
        'positions': (lambda impl, x, table: add_positions(x, table, impl=impl),
                      [normal(b, t, d), normal(t, d)], []),
        'cross_entropy': (lambda impl, z, y: categorical_nll(z, y, impl=impl),
                          [normal(b, t, a.vocab)],
                          [jax.random.randint(next(keys), (b, t), 0, a.vocab)]),
    }


def time_impl(fn, impl, diff, rest, repeats):
    def step(*diff):
        out, pullback = jax.vjp(lambda *d: fn(impl, *d, *rest), *diff)
        return out, pullback(jnp.ones_like(out))
    step = jax.jit(step)
    for _ in range(2):
        jax.block_until_ready(step(*diff))
    best = float('inf')
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(step(*diff))
        best = min(best, time.perf_counter() - start)
    return best


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, default in (('batch', 16), ('length', 256), ('width', 256), ('heads', 4),
                          ('mlp', 1024), ('vocab', 256), ('repeats', 10)):
        p.add_argument(f'--{name}', type=int, default=default)
    p.add_argument('--dtype', default='float32')
    a = p.parse_args()
    dtype = jnp.dtype(a.dtype)
    auto = ops.resolved(dtype=dtype)
    print(f'{jax.devices()[0].device_kind} ({jax.default_backend()}), {a.dtype}, batch {a.batch}, '
          f'length {a.length}, width {a.width}, {a.heads} heads, mlp {a.mlp}, vocab {a.vocab}; '
          f'best of {a.repeats}, forward + backward')
    print('| op | impl | ms | vs reference |\n|---|---|---|---|')
    for op, (fn, diff, rest) in cases(a, dtype).items():
        impls = [i for i in ops.IMPLS[op] if i != 'auto']
        if op == 'attention':   # the kernels of other backends
            impls = [i for i in impls if (i, jax.default_backend()) not in (
                ('cudnn', 'cpu'), ('cudnn', 'tpu'), ('splash', 'cpu'), ('splash', 'gpu'))]
        times = {impl: time_impl(fn, impl, diff, rest, a.repeats) for impl in impls}
        for impl, seconds in times.items():
            mark = ' (auto)' if auto[op].split(' ')[0] == impl else ''
            print(f'| {op} | {impl}{mark} | {1e3 * seconds:.2f} | '
                  f'{seconds / times["reference"]:.2f}x |')


if __name__ == '__main__':
    main()
