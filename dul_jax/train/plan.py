"""`dul-jax plan`: the meshes, remat policies and microbatch counts that N chips allow, ruled out
analytically where the train state alone cannot fit, the rest compiled ahead of time (most
data-parallel and least memory-saving first, as those are the fastest where they fit) and ranked
by the roofline estimate of their step time."""

import copy
import dataclasses

from dul_jax.errors import UserError
from dul_jax.sharding import targets
from dul_jax.sharding.inspect import bytes_per_device
from dul_jax.train import aot

# Memory levers in the order they are tried on one mesh: each saves more and costs more time.
LEVERS = (('none', 1), ('dots', 1), ('full', 1), ('full', 2), ('full', 4))


@dataclasses.dataclass
class Candidate:
    mesh: tuple[int, int, int]        # data, fsdp, tensor inside one slice
    remat: str | None                 # None: the model has no layer stack to rematerialise
    grad_accum: int
    state_bytes: int = 0              # params + optimizer state + EMA per chip (analytic)
    report: aot.Report | None = None
    note: str = ''                    # why it was ruled out or not compiled
    slices: int = 1                   # TPU slices; data runs across them too

    @property
    def overrides(self) -> dict:
        data, fsdp, tensor = self.mesh
        remat = {} if self.remat is None else {'model.remat': self.remat}
        slices = {'mesh.slices': self.slices} if self.slices > 1 else {}
        return {'mesh.data': data, 'mesh.fsdp': fsdp, 'mesh.tensor': tensor, **slices, **remat,
                'train.grad_accum': self.grad_accum}


def meshes(chips: int, max_tensor: int = 8) -> list[tuple[int, int, int]]:
    """Every (data, fsdp, tensor) with data * fsdp * tensor = chips and tensor <= max_tensor,
    most data-parallel first (the least communication per step where the state fits)."""
    found = [(chips // (fsdp * tensor), fsdp, tensor)
             for tensor in range(1, min(chips, max_tensor) + 1) if chips % tensor == 0
             for fsdp in range(1, chips // tensor + 1) if (chips // tensor) % fsdp == 0]
    return sorted(found, key=lambda m: (m[2], m[1]))


def configure(cfg, candidate: Candidate):
    """A copy of cfg with the candidate's mesh, remat and microbatching."""
    out = copy.deepcopy(cfg)
    for key, value in candidate.overrides.items():
        section, name = key.split('.')
        out[section][name] = value
    return out


def plan(cfg, target: targets.Target, max_compiles: int, devices=None) -> list[Candidate]:
    """Every candidate, in the order tried; compiled ones carry a report."""
    from dul_jax.train.setup import prepare
    devices = targets.devices(target) if devices is None else devices
    levers = LEVERS if 'remat' in cfg.model else ((None, 1), (None, 2), (None, 4))
    hbm, compiles, done = target.chip.hbm_bytes, 0, []
    for mesh in meshes(target.num_chips // target.slices):
        fitted = False
        for remat, accum in levers:
            candidate = Candidate(mesh, remat, accum, slices=target.slices)
            done.append(candidate)
            trial = configure(cfg, candidate)
            try:
                setup = prepare(trial, devices=devices)
            except UserError as e:
                candidate.note = f'invalid: {e}'
                break                  # the same mesh fails for every lever
            abstract = setup.abstract_state()
            candidate.state_bytes = bytes_per_device(
                (abstract.params, abstract.opt_state, abstract.ema_params))
            if candidate.state_bytes > hbm:
                candidate.note = (f'ruled out: the state alone needs '
                                  f'{candidate.state_bytes / aot.GIB:.2f} GiB per chip')
                break                  # remat and microbatches do not shrink the state
            if fitted:
                candidate.note = 'not compiled: a cheaper lever already fits this mesh'
                continue
            if compiles >= max_compiles:
                candidate.note = 'not compiled: --max-compiles reached'
                continue
            candidate.report = aot.compile_run(trial, target, devices, with_eval=False)
            compiles += 1
            fitted = candidate.report.fits
    return done


def format_plan(candidates: list[Candidate]) -> str:
    """A table: compiled candidates ranked (fitting ones by estimated step time), then the rest
    counted by reason."""
    compiled = [c for c in candidates if c.report is not None]
    # ranked by the step without overlap: the estimate that holds for any schedule
    ranked = sorted(compiled, key=lambda c: (not c.report.fits, c.report.roofline.serial_s))
    header = (f'{"rank":>4}  {"data x fsdp x tensor":<22}{"remat":<7}{"accum":>5}  '
              f'{"GiB/chip":>9}  {"fits":<5}{"step ms":>19}  {"MFU":>13}  {"bound":<12}')
    lines = [header]
    for i, c in enumerate(ranked, 1):
        r, (low, high) = c.report, c.report.mfu_range
        steps = f'{r.roofline.step_s * 1e3:.2f}-{r.roofline.serial_s * 1e3:.2f}'
        mfus = f'{low:.1%}-{high:.1%}'
        lines.append(f'{i:>4}  {"x".join(map(str, c.mesh)):<22}{c.remat!s:<7}'
                     f'{c.grad_accum:>5}  {r.total_bytes / aot.GIB:>9.2f}  '
                     f'{"yes" if r.fits else "no":<5}{steps:>19}  {mfus:>13}  '
                     f'{r.roofline.bound:<12}')
    if not compiled:
        lines.append('  (nothing compiled)')
    reasons = {}
    for c in candidates:
        if c.report is None:
            reasons.setdefault(c.note.split(':')[0], []).append(c)
    for reason, group in reasons.items():
        examples = ', '.join(sorted({'x'.join(map(str, c.mesh)) for c in group})[:4])
        lines.append(f'{len(group)} candidate(s) {reason} (meshes {examples}'
                     f'{", ..." if len({c.mesh for c in group}) > 4 else ""})')
    best = next((c for c in ranked if c.report.fits), None)
    if best is not None:
        lines.append('best: ' + ' '.join(f'--config.{k}={v}'
                                          for k, v in best.overrides.items()))
    return '\n'.join(lines)
