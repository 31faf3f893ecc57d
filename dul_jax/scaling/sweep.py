"""Sweeps: many runs of the normal trainer from one file, resumable, splittable across jobs.

A sweep file defines `get_sweep()` returning `(base_config, [SweepRun, ...])`. Each run trains in
WORKDIR/runs/NAME with the base config plus the run's overrides, through `dul_jax.train.loop.train`
(so checkpoints, resume and SIGTERM behave as for any run). A finished run leaves result.json
beside its checkpoints and is skipped from then on; a killed sweep rerun with the same command
resumes the unfinished run from its last checkpoint. `shard=(i, n)` takes runs i, i+n, i+2n, ...
so n jobs can share a sweep's directory. After every run WORKDIR/results.jsonl is rewritten from
all result.json files present, one line per finished run, in the sweep's order:

    name, budget, N (non-embedding params), N_total, D (tokens or examples seen), C (training
    FLOPs), C_source, loss (final eval, nats/token or the task's loss; None where the task
    reports none, as contrastive runs, whose probe accuracies are in final_metrics), train_loss
    (the last log interval's), F_forward and F_features (forward FLOPs per example), steps,
    batch_size, lr, seed, wall_s, diverged, plus the run's overrides.
"""

import copy
import dataclasses
import json
import math
import os
import time

import jax
import ml_collections

from dul_jax import config as config_lib
from dul_jax import storage
from dul_jax.accounting import count_params, xla_flops
from dul_jax.errors import UserError
from dul_jax.tasks.capabilities import Features
from dul_jax.train.trackers import parse_record

RESULT = 'result.json'


@dataclasses.dataclass(frozen=True)
class SweepRun:
    name: str                       # a directory name: unique within the sweep
    overrides: dict                 # config key ('model.embed_dim') -> value
    budget: float | None = None     # the nominal compute budget of its IsoFLOP group, if any


def load_sweep(path: str) -> tuple[ml_collections.ConfigDict, list[SweepRun]]:
    base, runs = config_lib.call_file_function(path, 'get_sweep', 'sweep',
                                               'experiments/scaling/python_source.py',
                                               '(base_config, [SweepRun, ...])')
    if not runs:
        raise UserError(f'the sweep file {path} defines no runs; make get_sweep() return at '
                        'least one SweepRun.')
    for run in runs:
        check_run_name(path, run.name)
    names = [r.name for r in runs]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise UserError(f'sweep {path} names runs {duplicated} more than once; give each run a '
                        'unique name.')
    for run in runs:  # every run's keys and types, before the first run starts
        run_config(base, run)
    return base, runs


def check_run_name(path: str, name) -> None:
    """A run trains in WORKDIR/runs/NAME, so NAME must be one plain folder name: '..' or 'a/b'
    would put a run outside runs/ or inside another run's folder."""
    if not isinstance(name, str) or name in ('', '.', '..') or any(c in name for c in '/\\\0'):
        raise UserError(f'sweep {path} names a run {name!r}, but a run trains in '
                        'WORKDIR/runs/NAME, so each name must be one plain folder name (not '
                        'empty, "." or "..", without "/", "\\" or NUL); rename it.')


REPORT_KEYS = ('units', 'literature', 'holdout')


def report_options(path: str) -> dict:
    """The sweep file's optional REPORT dict: write_report's units (of the loss, default
    nats/token), literature (LLM columns, default True) and holdout (largest_N, largest_C or
    None)."""
    module = config_lib.load_file_module(path, 'sweep', 'experiments/scaling/python_source.py')
    options = dict(getattr(module, 'REPORT', {}))
    unknown = sorted(set(options) - set(REPORT_KEYS))
    if unknown:
        raise UserError(f'REPORT in sweep file {path} has unknown keys {unknown}; use '
                        f'{", ".join(REPORT_KEYS)}.')
    return options


def parse_shard(text: str) -> tuple[int, int]:
    """'i/n' -> (i, n) with 0 <= i < n."""
    try:
        i, n = (int(part) for part in text.split('/'))
    except ValueError:
        i, n = -1, 0
    if not 0 <= i < n:
        raise UserError(f'--shard must be I/N with 0 <= I < N (e.g. 0/4), got "{text}".')
    return i, n


def run_config(base: ml_collections.ConfigDict, run: SweepRun) -> ml_collections.ConfigDict:
    cfg = copy.deepcopy(base)
    for key, value in run.overrides.items():
        try:
            config_lib.set_value(cfg, key, value)
        except UserError as e:
            raise UserError(f'run {run.name} of the sweep: {e} Fix the sweep file.') from None
    return cfg


def measure(cfg, steps: int) -> dict:
    """N, N_total, D and C of `steps` steps of cfg, from shapes alone (nothing is compiled), and
    the forward FLOPs of one example: F_forward (XLA's count of the task's eval_metrics, one
    forward pass with its loss) and F_features (of `features`, where the task has them).
    Scanned stacks are counted unrolled (train/mfu.py `unrolled`)."""
    from dul_jax.train.mfu import model_flops_per_step, unrolled
    from dul_jax.train.setup import prepare
    setup = unrolled(prepare(cfg, devices=jax.devices()[:1]))
    state = setup.abstract_state()
    total = count_params(state.params)
    flops, source = model_flops_per_step(setup, state, cfg.train.batch_size)
    if flops is None:
        raise UserError(f'the compute of task "{cfg.task}" cannot be counted ({source}); sweep '
                        'a task with an analytic FLOP count, such as "autoregressive".')
    embeddings = count_params(state.params, setup.task.embedding_names)
    one = setup.dummy_batch(1)
    rng = jax.random.key(0)
    forward = xla_flops(jax.jit(setup.task.eval_metrics).lower(state.params, one, rng))
    features = None   # a task without features, or data without images
    if isinstance(setup.task, Features) and 'image' in one:
        features = xla_flops(jax.jit(setup.task.features).lower(state.params, one['image']))
    return {'N': total - embeddings, 'N_total': total,
            'D': steps * cfg.train.batch_size * setup.task.example_size(),
            'C': flops * steps, 'C_source': source, 'F_forward': forward or None,
            'F_features': features or None}


def measure_overrides(base, overrides: dict) -> dict:
    """`measure` for one step of base + overrides: what a sweep file sizes its runs with."""
    return measure(run_config(base, SweepRun('probe', overrides)), 1)


def isoflop_runs(base, budgets, shapes: dict, steps_range: tuple[int, int], schedule,
                 seed_repeats=(), name_format: str = 'C{budget:.0e}_{shape}',
                 group: bool = True) -> list[SweepRun]:
    """IsoFLOP groups: for each budget and shape (name -> overrides), a run of budget / (FLOPs
    per step) steps where that lies in steps_range, plus `schedule(steps, size)`'s overrides
    (size: `measure_overrides`'s dict), named by name_format ('+' dropped); a second run with
    seed 1 for names in seed_repeats. group=False keeps the runs out of the IsoFLOP groups."""
    runs = []
    for budget in budgets:
        for shape, shape_overrides in shapes.items():
            size = measure_overrides(base, shape_overrides)
            steps = round(budget / size['C'])
            if not steps_range[0] <= steps <= steps_range[1]:
                continue
            overrides = {**shape_overrides, 'train.steps': steps, **schedule(steps, size)}
            name = name_format.format(budget=budget, shape=shape).replace('+', '')
            label = budget if group else None
            runs.append(SweepRun(name, overrides, label))
            if name in seed_repeats:
                runs.append(SweepRun(name + '_seed1', {**overrides, 'seed': 1}, label))
    return runs


def kaplan_learning_rate(non_embedding_params: int) -> float:
    """Kaplan et al. 2020, eq. D.1: the learning rate that fitted their runs of N parameters."""
    return 0.003239 - 0.0001395 * math.log(non_embedding_params)


def _write_json_atomic(path, obj, lines: bool = False) -> None:
    storage.write_atomic(path, ''.join(json.dumps(row) + '\n' for row in obj) if lines
                         else json.dumps(obj, indent=2))


def _run_dir(workdir: str, run) -> str:
    return os.fspath(storage.path(workdir) / 'runs' / run.name)


def collect(workdir: str, runs: list[SweepRun]) -> list[dict]:
    """The result.json of every finished run, in sweep order; rewrites WORKDIR/results.jsonl."""
    return gather([_run_dir(workdir, run) for run in runs],
                  storage.path(workdir) / 'results.jsonl')


def gather(rundirs, table) -> list[dict]:
    """The result.json of each finished run among `rundirs`, in their order; rewrites `table`
    (a results.jsonl that `dul_jax.scaling.report` fits) with them."""
    results = []
    for rundir in rundirs:
        saved = storage.read_text(storage.path(rundir) / RESULT)
        if saved is not None:
            results.append(json.loads(saved))
    if jax.process_index() == 0:
        _write_json_atomic(table, results, lines=True)
    return results


def _check_same_config(rundir: str, cfg, name: str) -> None:
    """A run directory from an edited sweep would resume a checkpoint of another model."""
    saved = storage.read_text(storage.path(rundir) / 'config.json')
    if saved is not None and json.loads(saved) != json.loads(config_lib.to_json(cfg)):
        raise UserError(f'run {name} in {rundir} was started with a different config; '
                        'delete that directory or restore the sweep file.')


def last_train_loss(rundir: str) -> float | None:
    """The training loss of the run's last log interval (its mean over those steps), from
    metrics.jsonl: beside the eval loss, it shows where a model starts to overfit."""
    text = storage.read_text(storage.path(rundir) / 'metrics.jsonl') or ''
    rows = [parse_record(line) for line in text.splitlines() if '"loss"' in line]
    rows = [row for row in rows if row is not None and 'loss' in row]   # not a torn line
    return rows[-1]['loss'] if rows else None


def run_one(base, run: SweepRun, workdir: str) -> dict | None:
    """Train one run to completion and write its result.json; None if it stopped on SIGTERM."""
    cfg = run_config(base, run)
    rundir = _run_dir(workdir, run)
    _check_same_config(rundir, cfg, run.name)
    return train_and_record(cfg, rundir, run.name, run.budget, run.overrides)


def train_and_record(cfg, rundir: str, name: str, budget: float | None, overrides: dict,
                     **extra) -> dict | None:
    """Train cfg in rundir with the normal trainer (resuming its checkpoints) and write the
    run's result.json (the fields of the module docstring, then `extra`): one format for every
    run the fits read, sweep runs and cooldown branches alike. None if it stopped on SIGTERM."""
    from dul_jax.train import loop
    start = time.perf_counter()
    try:
        final, diverged = loop.train(cfg, rundir), False
    except loop.TrainingDiverged as e:
        loop.log(f'run {name} diverged: {e}')
        final, diverged = {'loss': math.nan}, True
    if not final:
        return None
    result = {'name': name, 'budget': budget, **measure(cfg, cfg.train.steps),
              'loss': final.get('loss'), 'train_loss': last_train_loss(rundir),
              'steps': cfg.train.steps,
              'batch_size': cfg.train.batch_size, 'lr': cfg.optim.lr, 'seed': cfg.seed,
              'wall_s': time.perf_counter() - start, 'diverged': diverged,
              'final_metrics': final, 'overrides': overrides, **extra}
    if jax.process_index() == 0:
        _write_json_atomic(storage.path(rundir) / RESULT, result)
    return result


def run_sweep(path: str, workdir: str, shard: tuple[int, int] = (0, 1)) -> list[dict]:
    """Run this shard's unfinished runs; returns the results of the whole sweep found so far."""
    base, runs = load_sweep(path)
    index, count = shard
    mine = runs[index::count]
    for k, run in enumerate(mine):
        done = (storage.path(_run_dir(workdir, run)) / RESULT).is_file()
        label = f'[{k + 1}/{len(mine)}] {run.name}'
        if done:
            print(f'{label}: finished earlier, skipped', flush=True)
            continue
        print(f'{label}: {run.overrides}', flush=True)
        if run_one(base, run, workdir) is None:
            print('SIGTERM: the sweep stopped; rerun the same command to resume.', flush=True)
            break
        collect(workdir, runs)
    results = collect(workdir, runs)
    print(f'{len(results)} of {len(runs)} runs finished; table in '
          f'{storage.path(workdir) / "results.jsonl"}', flush=True)
    return results
