"""Ahead-of-time compilation of a run for a named TPU slice or GPU node, from any host
(`dul-jax compile`): the train and eval steps of `dul-jax train`, with its validation, mesh, rules
and shardings, compiled by the target's own XLA compiler; what each chip holds, whether it fits,
and a roofline estimate of the step time and MFU from the chip's published figures."""

import dataclasses
import time

import jax
import numpy as np

from dul_jax.accounting import xla_cost
from dul_jax.errors import UserError
from dul_jax.sharding import targets
from dul_jax.sharding.inspect import DCN, bytes_per_device, collectives
from dul_jax.train.mfu import model_flops_per_step

GIB = 2**30


@dataclasses.dataclass(frozen=True)
class Roofline:
    """Seconds per step if the chip were bound by compute, by memory, or by its links. With
    perfect overlap the step takes the largest of the three (`step_s`, a lower bound), with none
    their sum (`serial_s`, an upper bound for these counts)."""
    compute_s: float
    memory_s: float
    collective_s: float

    @property
    def step_s(self) -> float:
        return max(self.compute_s, self.memory_s, self.collective_s)

    @property
    def serial_s(self) -> float:
        return self.compute_s + self.memory_s + self.collective_s

    @property
    def bound(self) -> str:
        return max(('compute', self.compute_s), ('memory', self.memory_s),
                   ('collectives', self.collective_s), key=lambda kv: kv[1])[0]


def roofline(chip: targets.Chip, flops: float, bytes_accessed: float,
             bytes_sent: float) -> Roofline:
    """Per chip: FLOPs / peak FLOP/s, bytes accessed / HBM bandwidth, bytes sent / link
    bandwidth."""
    return Roofline(flops / chip.peak_flops, bytes_accessed / chip.hbm_bytes_s,
                    bytes_sent / chip.link_bytes_s)


def mfu(model_flops_per_chip: float, step_s: float, chip: targets.Chip) -> float:
    """Model FLOPs utilisation: the model's FLOPs per chip per second over the chip's peak."""
    return model_flops_per_chip / step_s / chip.peak_flops


# Executed FLOPs per model FLOP under each remat policy: `full` recomputes the forward pass in
# the backward (3 passes become 4); `dots` keeps the matmul outputs, recomputing only cheap ops.
REMAT_FLOPS = {'none': 1.0, 'dots': 1.0, 'full': 4.0 / 3.0}


@dataclasses.dataclass
class Report:
    """What one chip holds and does in one train step of a run compiled for `target`."""
    target: targets.Target
    memory: dict[str, int]            # per chip: params, optimizer state, batch, temporaries, code
    total_bytes: int                  # the compiled step's peak per chip
    xla_flops: float                  # per chip, XLA's cost analysis of the compiled step
    model_flops: float | None         # per chip, the model's count (train.mfu; None: no count)
    bytes_accessed: float             # per chip, XLA's cost analysis
    collectives: dict[str, dict[str, int]]
    roofline: Roofline
    compile_s: float
    compiled: object = dataclasses.field(repr=False, default=None)

    @property
    def fits(self) -> bool:
        return self.total_bytes <= self.target.chip.hbm_bytes

    @property
    def mfu_range(self) -> tuple[float, float]:
        """MFU without and with perfect overlap of compute, memory and collectives."""
        flops, chip = self.model_flops or self.xla_flops, self.target.chip
        return mfu(flops, self.roofline.serial_s, chip), mfu(flops, self.roofline.step_s, chip)


def compile_run(cfg, target: targets.Target, devices=None, with_eval: bool = True) -> Report:
    """Prepare cfg on the target's devices exactly as `train` would, and compile its steps."""
    from dul_jax.train.setup import prepare
    if target.slices != cfg.mesh.get('slices', 1):
        raise UserError(f'{target.name} has {target.slices} slice(s) but mesh.slices='
                        f'{cfg.mesh.get("slices", 1)}; pass --config.mesh.slices={target.slices}.')
    devices = targets.devices(target) if devices is None else devices
    setup = prepare(cfg, devices=devices)
    setup.parallel.refuse('dul-jax compile compiles the jit path for a topology')
    abstract = setup.abstract_state()
    train_batch = _abstract_batch(setup, cfg.train.batch_size)
    start = time.perf_counter()
    with setup.context():
        compiled = setup.train_step().lower(abstract, train_batch).compile()
        if with_eval:
            eval_batch = _abstract_batch(setup, cfg.eval.batch_size, mask=True)
            key = jax.eval_shape(jax.random.key, 0)   # no array on the absent devices
            setup.eval_step.lower(abstract.params, eval_batch, key).compile()
    seconds = time.perf_counter() - start
    return _report(setup, target, compiled, abstract, train_batch, seconds)


def _abstract_batch(setup, size: int, mask: bool = False) -> dict:
    batch = setup.dummy_batch()
    if mask:
        batch['mask'] = np.zeros((1,), np.float32)
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct((size,) + x.shape[1:], x.dtype,
                                                       sharding=setup.batch_sharding), batch)


def _report(setup, target, compiled, abstract, batch, seconds) -> Report:
    stats = compiled.memory_analysis()
    state_extra = bytes_per_device((abstract.ema_params, abstract.model_state, abstract.rng,
                                    abstract.step))
    memory = {
        'params': bytes_per_device(abstract.params),
        'optimizer state': bytes_per_device(abstract.opt_state),
        'EMA params and other state': state_extra,
        'batch': bytes_per_device(batch),
        'temporaries': int(stats.temp_size_in_bytes),
        'generated code': int(stats.generated_code_size_in_bytes),
    }
    # arguments and outputs, less the outputs that reuse donated argument buffers
    total = int(stats.argument_size_in_bytes + stats.output_size_in_bytes
                - stats.alias_size_in_bytes + stats.temp_size_in_bytes
                + stats.generated_code_size_in_bytes)
    analysis = xla_cost(compiled)
    xla_flops = float(analysis.get('flops', 0.0))
    bytes_accessed = float(analysis.get('bytes accessed', 0.0))
    # the task's analytic count, else XLA's count of the step lowered with its layers unrolled
    flops, _ = model_flops_per_step(setup, abstract, setup.cfg.train.batch_size)
    model_flops = None if flops is None else flops / target.num_chips
    found = collectives(compiled.as_text(), num_devices=target.num_chips)
    # ICI and NVLink traffic; the DCN transfers between slices are listed but not timed
    sent = sum(op['sent'] for name, op in found.items() if name != DCN)
    executed = xla_flops
    if model_flops:
        # XLA's cost analysis of the compiled step counts a scanned layer body once: take the
        # model's count, with remat's recompute. Its bytes stay a lower bound (docs/compile.md).
        executed = model_flops * REMAT_FLOPS.get(setup.cfg.model.get('remat', 'none'), 1.0)
    line = roofline(target.chip, executed, bytes_accessed, sent)
    return Report(target, memory, total, xla_flops, model_flops, bytes_accessed, found, line,
                  seconds, compiled)


def remedy(report: Report, cfg) -> str:
    """The sentence for a run that does not fit: its biggest item and the cheapest remedy."""
    item, size = max(report.memory.items(), key=lambda kv: kv[1])
    mesh = {a: cfg.mesh[a] for a in ('data', 'fsdp', 'tensor')}
    chips = report.target.num_chips // report.target.slices   # fsdp stays inside a slice
    if item in ('params', 'optimizer state', 'EMA params and other state'):
        if cfg.mesh.fsdp != -1 and cfg.mesh.fsdp * max(cfg.mesh.tensor, 1) < chips:
            fix = ('split the state over more chips: --config.mesh.fsdp=-1 --config.mesh.data=1 '
                   f'(now {mesh})')
        elif cfg.model.get('param_dtype', 'float32') == 'float32':
            fix = 'store the matrices in bfloat16: --config.model.param_dtype=bfloat16'
        else:
            fix = 'use a slice with more chips or more memory per chip'
    elif cfg.model.get('remat', 'none') == 'none' and 'remat' in cfg.model:
        fix = 'recompute activations in the backward pass: --config.model.remat=full'
    else:
        per_chip = cfg.train.batch_size // max(report.target.num_chips // max(
            cfg.mesh.tensor, 1), 1)
        accum = cfg.train.grad_accum * 2
        fix = (f'halve the examples per chip at a time (now about {per_chip}): '
               f'--config.train.grad_accum={accum}') if per_chip > 1 else \
            'use a slice with more chips or more memory per chip'
    return (f'the run needs {report.total_bytes / GIB:.2f} GiB per chip on '
            f'{report.target.name}, more than its {report.target.chip.hbm_bytes / GIB:.2f} GiB; '
            f'the biggest item is {item} ({size / GIB:.2f} GiB): {fix}.')


def save_executable(compiled, path: str) -> None:
    """The compiled train step, serialized (`jax.experimental.serialize_executable`) with its
    argument and result trees, pickled to `path` (local or gs://); load it on the target with
    `deserialize_and_load(*pickle.load(f))`."""
    import pickle

    from jax.experimental.serialize_executable import serialize

    from dul_jax import storage
    storage.write_atomic(storage.path(path), pickle.dumps(serialize(compiled)))


def format_report(report: Report) -> str:
    """The text `dul-jax compile` prints."""
    chip, t = report.target.chip, report.target
    title = (f'{t.name}: {t.num_chips} x {chip.kind} ({chip.hbm_bytes / GIB:.1f} GiB, '
             f'{chip.peak_flops / 1e12:.0f} TFLOP/s bf16 per chip); compiled in '
             f'{report.compile_s:.1f} s')
    lines = [title, 'memory per chip:']
    for name, value in report.memory.items():
        lines.append(f'  {name:<28} {value / GIB:10.3f} GiB')
    verdict = 'fits' if report.fits else 'DOES NOT FIT'
    lines.append(f'  {"peak of the compiled step":<28} {report.total_bytes / GIB:10.3f} GiB of '
                 f'{chip.hbm_bytes / GIB:.2f}: {verdict} '
                 f'({100 * report.total_bytes / chip.hbm_bytes:.0f}%)')
    model = 'unknown' if report.model_flops is None else f'{report.model_flops:.4g}'
    compiled = (f'{report.xla_flops:.4g} (a scanned layer counted once)' if report.xla_flops
                else 'none (no cost analysis for this target)')
    lines.append(f'FLOPs per chip per step: model {model} (analytic where the task has a count, '
                 f'else XLA on the unrolled step); XLA on the compiled step {compiled}')
    lines.append('collectives per step (count, bytes of results, bytes sent per chip):')
    for name, op in report.collectives.items():
        lines.append(f'  {name:<20} {op["count"]:>5} {op["bytes"]:>16,} {op["sent"]:>16,}')
    if not report.collectives:
        lines.append('  none')
    r, (low, high) = report.roofline, report.mfu_range
    memory = f'at least {r.memory_s * 1e3:.3f} ms' if report.bytes_accessed else 'unknown'
    lines.append(f'roofline per step: compute {r.compute_s * 1e3:.3f} ms, memory {memory}, '
                 f'collectives {r.collective_s * 1e3:.3f} ms ({r.bound}-bound)')
    lines.append(f'estimated step {r.step_s * 1e3:.3f}-{r.serial_s * 1e3:.3f} ms (full to no '
                 f'overlap), MFU {low:.1%}-{high:.1%}')
    if t.slices > 1:
        lines.append(f'  (the {DCN} between the {t.slices} slices is not in the estimate: its '
                     'time depends on the data-centre network)')
    return '\n'.join(lines)
