"""Model FLOPs utilisation: achieved FLOP/s divided by the device's peak.

On accelerators the peak is the published dense bf16 figure for the detected chip. On the CPU
there is no meaningful published figure, so we measure the machine's own XLA float32 matmul
throughput (a 2048^3 product) in the same process and call that the peak.
"""

import copy
import functools
import time

import jax
import jax.numpy as jnp

from dul_jax.accounting import xla_flops
from dul_jax.train.state import make_train_step

# Dense bf16 peaks in TFLOP/s per chip, matched against jax's device_kind (lower case).
PUBLISHED_PEAK_TFLOPS = (
    ('h100', 989.0),
    ('h200', 989.0),
    ('tpu v4', 275.0),
    ('tpu v5 lite', 197.0),  # v5e reports itself as "TPU v5 lite"
    ('tpu v5e', 197.0),
    ('tpu v5p', 459.0),
    ('tpu v5', 459.0),
    ('tpu v6 lite', 918.0),  # v6e (Trillium)
    ('tpu v6e', 918.0),
)


def measure_matmul_flops(size: int = 2048, repeats: int = 10) -> float:
    """FLOP/s of a float32 size^3 matmul on the default device, best of `repeats` (after
    warm-up)."""
    a = jnp.ones((size, size), jnp.float32)
    matmul = jax.jit(lambda x, y: x @ y)
    matmul(a, a).block_until_ready()
    best = float('inf')
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(a, a).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2.0 * size ** 3 / best


@functools.cache
def peak_flops_per_device() -> tuple[float, str]:
    """(peak FLOP/s of one device, where the figure comes from)."""
    device = jax.devices()[0]
    kind = device.device_kind.lower()
    if device.platform == 'cpu':
        return measure_matmul_flops(), 'measured XLA f32 2048^3 matmul on this CPU'
    for name, tflops in PUBLISHED_PEAK_TFLOPS:
        if name in kind:
            return tflops * 1e12, f'published dense bf16 peak of {device.device_kind}'
    return float('nan'), f'no published peak known for {device.device_kind}'


def unrolled(setup):
    """The setup itself, or where its model scans its layers (`model.scan_unroll` != 0) a copy on
    the same devices with them unrolled: the same arithmetic, but XLA's cost analysis counts a
    scanned loop body once."""
    if not setup.cfg.model.get('scan_unroll', 0):
        return setup
    from dul_jax.train.setup import prepare
    cfg = copy.deepcopy(setup.cfg)
    cfg.model.scan_unroll = 0
    return prepare(cfg, devices=list(setup.mesh.devices.flat), spec=setup.spec)


def model_flops_per_step(setup, state, batch_size: int) -> tuple[float | None, str]:
    """(training FLOPs of one global step or None, where the figure comes from): the task's
    analytic count where it has one, else XLA's cost analysis of the lowered (uncompiled,
    unpartitioned) step on abstract inputs, which costs a trace but no compile; a scanned stack
    is counted unrolled (see `unrolled`)."""
    analytic = setup.task.flops_per_example(state.params)
    if analytic is not None:
        return analytic * batch_size, 'analytic'
    counted = unrolled(setup)
    if counted is not setup:
        setup, state = counted, counted.abstract_state()
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)
    step = make_train_step(setup.task, setup.tx, setup.schedule, setup.cfg.optim.ema_decay)
    flops = xla_flops(jax.jit(step).lower(abstract, setup.dummy_batch(batch_size)))
    if not flops > 0:   # a DiT step on an H100 got 0 here: no count is better than a wrong one
        return None, "unknown: XLA's cost analysis reported no FLOPs for this step"
    return flops, 'xla'
