"""Cooldown branches of a warmup-stable-decay run (Hägele et al. 2024, arXiv 2405.18392).

A stable-phase run (optim.schedule='wsd' with decay_fraction=0 and decay_steps=0) never decays.
Its branch from kept checkpoint k with d decay steps is the same config with train.steps=k+d and
optim.decay_steps=d: the wsd schedule depends only on the step, so up to k the branch is the
stable run, and one stable run yields a trained model for every length k+d at the cost of d
steps each. `branch` copies checkpoint k (state and data position) into the branch's workdir and
trains it on with the normal trainer, which resumes at k; the finished branch writes result.json
as a sweep run does (D and C counted over all k+d steps), so the fits take it as a run of its
own. OUT/results.jsonl lists every finished branch in OUT.
"""

import json
import os
import re

import jax

from dul_jax import config as config_lib
from dul_jax import storage
from dul_jax.errors import UserError
from dul_jax.scaling import sweep
from dul_jax.train import workdir as workdir_lib
from dul_jax.train import workdir_lock

# orbax's marks of a finished step: the file it writes last, and the name of a step in progress
COMMIT_FILE = 'commit_success.txt'
TMP_SUFFIX = '.orbax-checkpoint-tmp'
FIXED_KEYS = ('train.steps', 'optim.decay_steps')   # what --steps and --decay-steps set


def branch_name(step: int, decay_steps: int) -> str:
    return f'cooldown_k{step}_d{decay_steps}'


def parse_steps(text: str) -> list[int]:
    """'1000,2000' -> [1000, 2000]: the kept steps to branch from."""
    try:
        steps = [int(part) for part in text.split(',')]
    except ValueError:
        steps = []
    if not steps or min(steps) < 1:
        raise UserError(f'--steps must be positive checkpoint steps separated by commas (e.g. '
                        f'1000,2000), got "{text}".')
    return steps


def kept_steps(checkpoints) -> list[int]:
    """The finished orbax steps in a checkpoints folder (nothing in it is touched)."""
    import orbax.checkpoint as ocp
    return sorted(ocp.path.step.checkpoint_steps(storage.path(checkpoints)))


def stable_config(stable_workdir: str):
    """The stable run's config; UserError unless it is a stable phase that never decays."""
    cfg = workdir_lib.load_config_of(stable_workdir)
    o = cfg.optim
    if o.schedule != 'wsd' or o.get('decay_fraction', 0.2) != 0 or o.get('decay_steps', 0) != 0:
        raise UserError(
            f'{stable_workdir} was trained with optim.schedule={o.schedule}, decay_fraction='
            f'{o.get("decay_fraction", 0.2)}, decay_steps={o.get("decay_steps", 0)}; cooldown '
            'branches start from a stable-phase run (optim.schedule=wsd, '
            'optim.decay_fraction=0, optim.decay_steps=0).')
    return cfg


def branch_config(stable_workdir: str, step: int, decay_steps: int, overrides=()):
    """The stable run's config with train.steps=step+decay_steps, optim.decay_steps=decay_steps
    and the `key=value` overrides (e.g. optim.decay_shape=linear), validated."""
    cfg = stable_config(stable_workdir)
    fixed = [item for item in overrides if item.split('=', 1)[0] in FIXED_KEYS]
    if fixed:
        raise UserError(f'{fixed[0]} is set by the branch (train.steps = step + decay steps, '
                        'optim.decay_steps = decay steps); drop it.')
    if decay_steps < 1:
        raise UserError(f'--decay-steps must be positive, got {decay_steps}.')
    for item in overrides:
        config_lib.apply_override(cfg, item)
    config_lib.set_value(cfg, 'train.steps', step + decay_steps)
    config_lib.set_value(cfg, 'optim.decay_steps', decay_steps)
    config_lib.validate_common(cfg)
    return cfg


def _check(stable_workdir: str, step: int, cfg, out_workdir: str) -> None:
    """The refusals that need no training: step not kept, out_workdir holding another run."""
    kept = kept_steps(storage.path(stable_workdir) / 'checkpoints')
    if step not in kept:
        raise UserError(f'step {step} is not a kept checkpoint of {stable_workdir} (kept: '
                        f'{", ".join(map(str, kept)) or "none"}); branch from one of those.')
    out = storage.path(out_workdir)
    saved = storage.read_text(out / workdir_lib.CONFIG_FILE)
    if (config_lib.differences(config_lib.from_json(saved), cfg) if saved is not None
            else kept_steps(out / 'checkpoints')):
        raise UserError(f'{out_workdir} already holds a different run; delete it or pass '
                        'another --out.')


def copy_checkpoint(source, checkpoints, step: int) -> None:
    """Copy the orbax step folder `source` to CHECKPOINTS/STEP so that a copy cut short is never
    taken for a finished step: locally into a temporary name that orbax skips, renamed at the
    end; on an object store (no rename) in place, with the commit file, orbax's mark of a
    finished step there, written last (orbax writes it locally too)."""
    checkpoints, final = storage.path(checkpoints), storage.path(checkpoints) / str(step)
    checkpoints.mkdir(parents=True, exist_ok=True)
    target = final if storage.is_url(final) else checkpoints / f'{step}{TMP_SUFFIX}-branch'
    if target.exists():   # a copy cut short earlier
        target.rmtree()
    for path in files(source):
        if path != COMMIT_FILE:
            _copy_file(source / path, target / path)
    (target / COMMIT_FILE).write_text(f'Checkpoint commit was successful to {final}')
    if target != final:
        target.rename(final)


def files(folder) -> list[str]:
    """The files under `folder`, as paths relative to it (epath has no recursive glob)."""
    found = []
    for item in sorted(folder.iterdir()):
        found += ([f'{item.name}/{sub}' for sub in files(item)] if item.is_dir()
                  else [item.name])
    return found


def _copy_file(source, dest) -> None:
    """A streamed copy: between local folders and object stores alike, in bounded memory."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with source.open('rb') as f, dest.open('wb') as g:
        while chunk := f.read(1 << 24):
            g.write(chunk)


def branch(stable_workdir: str, step: int, decay_steps: int, out_workdir: str,
           overrides=()) -> dict | None:
    """Train the cooldown branch of the stable run from its kept checkpoint `step` over
    `decay_steps` steps in out_workdir; returns its result (the one saved, if it finished
    before), or None if it stopped on SIGTERM (rerun to resume)."""
    cfg = branch_config(stable_workdir, step, decay_steps, overrides)
    _check(stable_workdir, step, cfg, out_workdir)
    out = storage.path(out_workdir)
    saved = storage.read_text(out / sweep.RESULT)
    if saved is not None:
        return json.loads(saved)
    stable = storage.path(stable_workdir)
    if jax.process_index() == 0:   # the others wait: one copy, as the trainer saves one
        with workdir_lock.exclusive(out_workdir):
            storage.write_atomic(out / workdir_lib.CONFIG_FILE, config_lib.to_json(cfg))
            spec = storage.read_text(stable / workdir_lib.SPEC_FILE)
            if spec is not None:
                storage.write_atomic(out / workdir_lib.SPEC_FILE, spec)
            if not kept_steps(out / 'checkpoints'):   # else a killed branch: resumed as it is
                copy_checkpoint(stable / 'checkpoints' / str(step), out / 'checkpoints', step)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(f'dul_jax cooldown branch {out}')
    # the overrides: what the branch changes in the stable run's config, and branch_of, as the
    # report merges runs whose overrides differ only in seed, and branches of two stable runs
    # (two widths, say) may change the same keys
    base, flat = config_lib.flatten(stable_config(stable_workdir)), config_lib.flatten(cfg)
    changed = {k: v for k, v in flat.items() if base.get(k) != v or k in FIXED_KEYS}
    return sweep.train_and_record(cfg, os.fspath(out), out.name, None,
                                  {'branch_of': os.fspath(stable), **changed},
                                  branch_step=step, decay_steps=decay_steps)


def _branch_key(path) -> tuple[int, int]:
    match = re.fullmatch(r'cooldown_k(\d+)_d(\d+)', path.name)
    return (int(match[1]), int(match[2])) if match else (-1, -1)


def run_branches(stable_workdir: str, steps: list[int], decay_steps: int, out: str = '',
                 overrides=()) -> list[dict]:
    """`dul-jax cooldown`: one branch per step, into OUT/cooldown_kK_dD (OUT defaults to
    STABLE/cooldowns), one after another; every refusal comes before the first trains. Rewrites
    OUT/results.jsonl with every finished branch in OUT; returns this command's results."""
    root = storage.path(out or storage.path(stable_workdir) / 'cooldowns')
    dirs = [root / branch_name(k, decay_steps) for k in steps]
    for k, d in zip(steps, dirs):
        _check(stable_workdir, k, branch_config(stable_workdir, k, decay_steps, overrides), d)
    results = []
    for k, d in zip(steps, dirs):
        done = (d / sweep.RESULT).is_file()
        result = branch(stable_workdir, k, decay_steps, os.fspath(d), overrides)
        if result is None:
            print('SIGTERM: the branches stopped; rerun the same command to resume.', flush=True)
            break
        results.append(result)
        found = sorted((p for p in root.iterdir() if _branch_key(p)[0] >= 0), key=_branch_key)
        sweep.gather(found, root / 'results.jsonl')
        loss = 'none' if result['loss'] is None else f'{result["loss"]:.4f}'
        print(f'{d.name}: eval loss {loss} after {k} + {decay_steps} steps'
              f'{" (finished earlier)" if done else ""} in {d}', flush=True)
    return results
