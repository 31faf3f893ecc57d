"""The training loop, evaluation and sampling of one run in one workdir.

WORKDIR/ holds config.json, data_spec.json, metrics.jsonl, tensorboard/, checkpoints/ (orbax),
samples/ and logs/process_<i>.log (each process's own log).
Running `train` again on the same workdir resumes from the latest checkpoint. SIGTERM or SIGINT
(Ctrl-C) saves a
checkpoint and returns; a non-finite loss stops the run before any bad state is checkpointed.
"""

import contextlib
import json
import math
import os
import signal
import sys
import time

import jax
import numpy as np
import tqdm

from dul_jax import config as config_lib
from dul_jax import data, evaluators, images, storage
from dul_jax.accounting import count_params
from dul_jax.errors import UserError, WorldFailed, from_os_error
from dul_jax.sharding import distributed
from dul_jax.sharding.liveness import Watchdog
from dul_jax.sharding.mesh import to_host
from dul_jax.tasks.capabilities import DataInit, Generates, Pictures
from dul_jax.train import mfu, workdir_lock
from dul_jax.train.checkpoint import Checkpointer
from dul_jax.train.evaluation import Evaluation
from dul_jax.train.run import open_run
from dul_jax.train.setup import Setup, prepare
from dul_jax.train.state import eval_key, eval_params
from dul_jax.train.warm_start import warm_start
from dul_jax.train.workdir import kept_spec, load_config_of, write_spec  # noqa: F401 (scripts')
from dul_jax.train.writers import HostLog, MetricWriter


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the message names the step and the last good checkpoint."""


def _is_main() -> bool:
    return jax.process_index() == 0


_host_log: HostLog | None = None   # this process's log file while `train` runs


def log(message: str) -> None:
    """Print `message` above the progress bar on process 0, and write it to this process's log
    file (every process) while a run trains."""
    if _is_main():
        tqdm.tqdm.write(message)
    if _host_log is not None:
        _host_log.write(message)


@contextlib.contextmanager
def _logging_to(host_log: HostLog):
    global _host_log
    _host_log = host_log
    try:
        yield
    finally:
        _host_log = None


def _say_everywhere(message: str) -> None:
    """A stop that every process must tell: to its own stderr and to its log file."""
    print(message, file=sys.stderr, flush=True)
    if _host_log is not None:
        _host_log.write(message)


class _StopSignals:
    """Turns SIGTERM (a scheduler's preemption) and SIGINT (Ctrl-C) into a flag the loop polls,
    so the current step finishes and is saved; `name` is the signal's.

    Only in a single-process run: with several processes JAX's preemption sync manager owns
    SIGTERM, and orbax's `reached_preemption(step)` makes every process stop at the same step.
    """
    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.name = None
        self.at_once = False   # once the last step is saved: raise Stopped, stop where it is
        self._active = jax.process_count() == 1

    def __enter__(self):
        if self._active:
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def _handle(self, signum, frame):
        self.name = signal.Signals(signum).name
        if self.at_once:
            raise _Stopped(self.name)

    def __exit__(self, *exc):
        if self._active:
            for s, handler in self._previous.items():
                signal.signal(s, handler)


class _Stopped(Exception):
    """A stop signal during the final eval or sampling, with the last step already saved."""


class _Profile:
    """A jax.profiler trace of steps [start, start + count) on process 0, written where the
    TensorBoard events go (WORKDIR/tensorboard/plugins/profile/, TensorBoard's profile tab)."""

    def __init__(self, writer: MetricWriter, start: int, count: int):
        self.start, self.count, self.tracing = start, count if writer.enabled else 0, False
        self.directory = os.path.join(writer.local, 'tensorboard') if writer.enabled else None

    def before(self, step: int) -> None:
        if self.count and step == self.start:
            jax.profiler.start_trace(self.directory)
            self.tracing = True

    def after(self, step: int, state) -> None:
        if self.tracing and step == self.start + self.count - 1:
            jax.block_until_ready(state)   # the traced steps' work, not just their dispatch
            self._stop()
            log(f'profiled steps {self.start}-{step} into {self.directory}/plugins/profile')

    def _stop(self) -> None:
        jax.profiler.stop_trace()
        self.tracing = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.tracing:  # the run ended inside the traced steps
            self._stop()


def _mean_metrics(history: list[dict]) -> dict[str, float]:
    return {k: float(np.mean([h[k] for h in history])) for k in history[0]}


def _checkpointer(cfg, workdir: str) -> Checkpointer:
    return Checkpointer(storage.path(workdir) / 'checkpoints', keep=cfg.train.keep_checkpoints,
                        replica_parallel=cfg.train.ckpt_replica_parallel)


def train(cfg, workdir: str, debug: bool = False) -> dict[str, float]:
    """Train (or resume) the run in `workdir`; returns the final eval metrics ({} on SIGTERM)."""
    # The lock first: a second trainer is told at once, before the model is built.
    # closing() in reverse order on any exit: a crash still finishes pending checkpoint writes
    config_lib.check_tracking(cfg)
    distributed.check_same_workdir(workdir)
    with workdir_lock.exclusive(workdir, enabled=_is_main()), \
            contextlib.closing(HostLog(workdir)) as host_log, _logging_to(host_log):
        setup = prepare(cfg, eager=debug)
        if debug:
            log('--debug: one device, the train step without jit, NaN checks and chex asserts on')
        with Watchdog(cfg.distributed.get('heartbeat_timeout_s', 60), _say_everywhere), \
                contextlib.closing(MetricWriter(workdir, cfg.tracking.trackers, cfg)) as writer, \
                contextlib.closing(_checkpointer(cfg, workdir)) as ckpt:
            run = _Run(setup, workdir, writer, ckpt, debug)
            try:
                return run.train()
            except OSError as e:   # a store gone away or a full disk while logging: one sentence
                known = from_os_error(e)
                if not isinstance(known, WorldFailed):
                    raise
                ckpt.wait(run.step)   # a save the same outage failed is the sentence to end in
                last = f'step {ckpt.committed}' if ckpt.committed is not None else 'none yet'
                raise WorldFailed(f'training stopped at step {run.step}, and the last good '
                                  f'checkpoint is {last} in {ckpt.directory}: {known}') from None


class _Run:
    """The state of one training loop: what it logs, when it evaluates, samples and saves."""

    def __init__(self, setup: Setup, workdir: str, writer: MetricWriter, ckpt: Checkpointer,
                 debug: bool):
        self.setup, self.cfg, self.workdir = setup, setup.cfg, workdir
        self.writer, self.ckpt, self.debug = writer, ckpt, debug
        self.data_iter = data.train_iterator(self.cfg.data, setup.process_batch_size,
                                             self.cfg.seed, jax.process_index(),
                                             jax.process_count())
        self.pending, self.history = [], []   # device metrics not yet fetched; fetched, unlogged
        self.last_good = None                 # the newest checkpoint whose losses were all finite
        self.compile_s = None
        self.step = None                      # the last step taken
        self.evaluation = Evaluation(setup)   # its compiled eval functions serve every eval

    def _restore_or_init(self):
        start = self.ckpt.latest_step()
        if start is None:
            state, start = self.setup.init_state(self.cfg.seed), 0
            if isinstance(self.setup.task, DataInit):
                state = self.setup.data_init(state, next(self.data_iter))
                log('data-dependent init from the first training batch')
            if self.cfg.init_from:
                state, count = warm_start(state, self.cfg.init_from, self.cfg.init_params)
                log(f'warm start: {count} param arrays from {self.cfg.init_from}')
        else:
            # Damaged checkpoints are set aside only if the data pipeline is the one they were
            # saved with (the state's shapes the checkpointer checks itself): under another one
            # every checkpoint's iterator position could fail to restore, intact or not.
            changed = self._changed_settings()
            pipeline = [c for c in changed if c.startswith(('data.', 'seed ', 'train.batch_size '))]
            try:
                state = self.ckpt.restore(self.setup.abstract_state(), self.data_iter,
                                          fall_back=not pipeline)
            except UserError:
                if not changed:
                    raise
                raise UserError(f'checkpoint {self.ckpt.directory}/{start} could not be restored, '
                                'and this config differs from the one it was saved with '
                                f'({"; ".join(changed)}); resume with those values, or train in '
                                'another --workdir.') from None
            start = self.ckpt.restored_step
            self.last_good = start
            log(f'resumed from {self.ckpt.directory}/{start}')
        self.writer.start(start)
        self._record_config(start)
        return state, start

    def _changed_settings(self) -> list[str]:
        """How this config differs from the workdir's config.json (none if there is none)."""
        saved = storage.read_text(storage.path(self.workdir) / 'config.json')
        if saved is None:
            return []
        return config_lib.differences(config_lib.from_json(saved), self.cfg)

    def _record_config(self, start: int) -> None:
        """Write config.json only now that the state is restored (or fresh); a config that
        differs from the one before is said, and the one before kept in config_history/."""
        if not _is_main():
            return
        root = storage.path(self.workdir)
        changed = self._changed_settings()
        if changed:
            log(f'resuming at step {start} with changed settings: {"; ".join(changed)}')
            storage.write_atomic(root / 'config_history' / f'config_until_step_{start:06d}.json',
                                 (root / 'config.json').read_text())
        storage.write_atomic(root / 'config.json', config_lib.to_json(self.cfg))
        write_spec(self.workdir, self.setup.spec)   # eval, sample, export need no data set then
        self.writer.write_hparams(config_lib.flatten(self.cfg))

    def train(self) -> dict[str, float]:
        """Step from the latest checkpoint (or a fresh state) to train.steps; returns the final
        eval metrics, or {} after a SIGTERM or preemption (with a checkpoint saved)."""
        setup, tc = self.setup, self.cfg.train
        state, step = self._restore_or_init()
        self.step = step
        self.flops_per_step, flops_source = mfu.model_flops_per_step(setup, state, tc.batch_size)
        state = setup.to_step_form(state)
        log(f'{setup.task.name} on {setup.spec.name}: {count_params(state.params):,} params, '
            f'mesh {dict(setup.mesh.shape)}, global batch {tc.batch_size}, {tc.steps} steps, '
            + (f'{self.flops_per_step:.3g} FLOPs/step ({flops_source})' if self.flops_per_step
               else f'FLOPs/step {flops_source}, so no MFU'))
        rows = setup.process_batch_size
        first = jax.process_index() * rows
        if _host_log is not None:
            _host_log.write(f'process {jax.process_index()} of {jax.process_count()}: '
                            f'{jax.local_device_count()} {jax.local_devices()[0].platform} '
                            f'device(s), rows {first}-{first + rows - 1} of each global batch, '
                            f'from step {step}')
        step_fn = setup.train_step(jit=not self.debug)
        # a bar only on a terminal; elsewhere (logs of batch jobs) a plain line per log interval
        self.bar = _is_main() and sys.stderr.isatty()
        progress = tqdm.tqdm(total=tc.steps, initial=step, disable=not self.bar, unit='step',
                             dynamic_ncols=True, mininterval=1.0)
        self.clock = (time.perf_counter(), 0)  # start of the current log interval, steps in it
        profile = _Profile(self.writer, tc.profile_start, tc.profile_steps)
        with contextlib.closing(progress), setup.context(), _StopSignals() as signals, profile:
            while step < tc.steps:
                profile.before(step + 1)
                state, metrics = step_fn(state, setup.put_train_batch(next(self.data_iter)))
                step += 1
                self.step = step
                profile.after(step, state)
                self.pending.append(metrics)
                self.clock = (self.clock[0], self.clock[1] + 1)
                progress.update(1)
                self.ckpt.wait_if_done(step)   # a failed background save stops training here
                if self.compile_s is None:
                    self._time_first_step(state)
                preempted = self.ckpt.reached_preemption(step)
                stopping = signals.name is not None or preempted
                if step % tc.log_every == 0 or step == tc.steps or stopping:
                    progress.set_postfix(self._log_interval(step))
                if tc.eval_every and step % tc.eval_every == 0 and step < tc.steps:
                    self.writer.write(step, _prefixed(evaluate(
                        setup, setup.from_step_form(state), ev=self.evaluation), 'eval/'))
                    self.clock = (time.perf_counter(), 0)
                if tc.sample_every and step % tc.sample_every == 0 and step < tc.steps:
                    write_samples(setup, setup.from_step_form(state), self.workdir, step,
                                  writer=self.writer)
                if (tc.ckpt_every and step % tc.ckpt_every == 0) or step == tc.steps or stopping:
                    self._save(step, state)
                if stopping:
                    self.ckpt.wait(step)
                    log(f'{signals.name or "preemption notice"}: saved a checkpoint at step '
                        f'{step} in {self.ckpt.directory}; rerun the same command to resume.')
                    return {}
            # the last step is saved: a stop signal from here on ends the eval or sampling at once
            signals.at_once = True
            try:
                if signals.name is not None:
                    raise _Stopped(signals.name)
                state = setup.from_step_form(state)
                final = evaluate_all(setup, state, self.evaluation)
                self.writer.write(step, _prefixed(final, 'eval/'))
                self.writer.write_summary({'step': step, **_prefixed(final, 'eval/')})
                paths = write_samples(setup, state, self.workdir, step, writer=self.writer)
            except _Stopped as stop:
                self.ckpt.wait(step)
                log(f'{stop}: stopped the final eval and sampling; checkpoint {step} is saved in '
                    f'{self.ckpt.directory}: rerun the same command to evaluate and sample it.')
                return {}
        log(f'eval on {setup.spec.eval_split}: ' +
            ', '.join(f'{k} {v:.4f}' for k, v in final.items()))
        log(f'workdir {storage.path(self.workdir)}: config.json, metrics.jsonl, tensorboard/, '
            f'checkpoints/{step}, samples: {", ".join(paths)}')
        return final

    def _time_first_step(self, state) -> None:
        jax.block_until_ready(state.step)
        self.compile_s = time.perf_counter() - self.clock[0]
        self.clock = (time.perf_counter(), 0)
        log(f'first step (compile + run) took {self.compile_s:.1f}s')

    def _fetch(self, step: int) -> None:
        """Fetch pending per-step metrics; stop at the first non-finite loss."""
        fetched = jax.device_get(self.pending)
        first = step - len(fetched) + 1
        for i, m in enumerate(fetched):
            if not math.isfinite(float(m['loss'])):
                last = f'step {self.last_good}' if self.last_good is not None else 'none'
                raise TrainingDiverged(
                    f'loss became {float(m["loss"])} at step {first + i}; the last good checkpoint '
                    f'is {last} in {self.ckpt.directory}. Lower --config.optim.lr or '
                    '--config.optim.clip_norm and rerun.')
        self.history.extend(fetched)
        self.pending = []

    def _log_interval(self, step: int) -> dict[str, str]:
        """Write the mean metrics since the last log, with throughput; return the bar's postfix."""
        self._fetch(step)
        start, steps = self.clock
        elapsed = time.perf_counter() - start
        row = _mean_metrics(self.history)
        for key in self.history[-1]:   # the current learning rate(s), not their mean
            if key == 'lr' or key.endswith('/lr'):
                row[key] = float(self.history[-1][key])
        batch, size = self.cfg.train.batch_size, self.setup.task.example_size()
        row['examples_seen'], row['tokens_seen'] = step * batch, step * batch * size
        if steps:
            row['examples_per_s'] = steps * batch / elapsed
            row['tokens_per_s'] = steps * batch * size / elapsed
            row['step_s'] = elapsed / steps
            # the same MFU as benchmarks/train_step.py: model FLOPs over (devices x peak)
            if self.flops_per_step:
                peak = mfu.peak_flops_per_device()[0] * self.setup.mesh.size
                row['mfu'] = self.flops_per_step / row['step_s'] / peak
        row['compile_s'] = self.compile_s
        self.writer.write(step, row)
        self.history = []
        self.clock = (time.perf_counter(), 0)
        postfix = {'loss': f'{row["loss"]:.4f}', 'tok_s': f'{row.get("tokens_per_s", 0):,.0f}'}
        if 'mfu' in row:
            postfix['mfu'] = f'{row["mfu"]:.1%}'
        if not self.bar:
            log(f'step {step}/{self.cfg.train.steps}: ' +
                ', '.join(f'{k} {v}' for k, v in postfix.items()))
        return postfix

    def _save(self, step: int, state) -> None:
        self._fetch(step)  # never checkpoint a state whose losses were not all finite
        self.ckpt.save(step, self.setup.from_step_form(state), self.data_iter, force=True)
        self.writer.sync(force=True)
        self.last_good = step


def _prefixed(metrics: dict, prefix: str) -> dict:
    return {prefix + k: v for k, v in metrics.items()}


def evaluate(setup: Setup, state, max_examples: int | None = None,
             ev: Evaluation | None = None) -> dict[str, float]:
    """The task's per-example eval metrics averaged over the first `max_examples` eval examples
    (default eval.max_examples; 0: all of them), on the run's mesh; `ev` reuses its compiled
    functions (the trainer evaluates with one Evaluation throughout)."""
    ev = ev or Evaluation(setup, max_examples)
    with setup.context():
        return ev.mean('eval', setup.task.eval_metrics, eval_params(state),
                       eval_key(setup.cfg.seed))[0]


def evaluate_all(setup: Setup, state, ev: Evaluation) -> dict[str, float]:
    """`evaluate` and then every configured evaluator (evaluators/), on the same examples."""
    metrics = evaluate(setup, state, ev=ev)
    with setup.context():
        metrics.update(evaluators.evaluate(ev, eval_params(state)))
    return metrics


def write_samples(setup: Setup, state, workdir: str, step: int, num: int | None = None,
                  seed: int | None = None, writer: MetricWriter | None = None) -> list[str]:
    """Save what the eval params make, `num` (default sample.num) of each, as
    WORKDIR/samples/step_NNNNNN*: samples where the task generates (Generates) and pictures of
    the first eval examples where it makes them (Pictures); returns the paths ([] on processes
    other than 0, or for a task that does neither).

    Every process must call it (outputs are global arrays, gathered by `to_host`). The key is
    `seed` (default the run's) folded with `step`, so the same call gives the same outputs.
    """
    task, num = setup.task, num or setup.cfg.sample.num
    rng = jax.random.fold_in(jax.random.key(setup.cfg.seed if seed is None else seed), step)
    outputs = {}
    with setup.context():
        params = eval_params(state)
        if isinstance(task, Generates):
            outputs.update(task.sample(params, rng, num))
        if isinstance(task, Pictures):
            pictures = task.pictures(params, rng, Evaluation(setup).first_examples(num))
            clash = sorted(outputs.keys() & pictures.keys())
            if clash:   # save_samples takes both in one dict
                raise ValueError(f'{type(task).__name__}.pictures reuses names of its samples '
                                 f'({", ".join(clash)}); rename them.')
            outputs.update(pictures)
        outputs = jax.tree.map(to_host, outputs)
    if not _is_main() or not outputs:
        return []
    stem = storage.path(workdir) / 'samples' / f'step_{step:06d}'
    paths = task.save_samples(outputs, os.fspath(stem))
    for path in paths if writer is not None else ():
        if path.endswith('.png'):  # every family's image samples, as TensorBoard images too
            name = 'samples' + path[len(os.fspath(stem)):].removesuffix('.png')
            writer.write_image(step, name, images.read_png(path))
    return paths


def restore_latest(cfg, workdir: str):
    """The Setup (on the kept data spec) and latest state of a workdir, for eval and sample;
    `dul_jax.load_run` is the notebook's one-device view of a run."""
    return open_run(cfg, workdir)


def eval_command(cfg, workdir: str) -> dict[str, float]:
    """`dul-jax eval`: the task's metrics and the configured evaluators on the latest checkpoint,
    over the first eval.max_examples eval examples (0, the default: all of them); writes
    WORKDIR/eval_step_NNNNNN.json and returns the metrics."""
    setup, state = restore_latest(cfg, workdir)
    ev = Evaluation(setup)
    metrics = evaluate_all(setup, state, ev)
    step = int(state.step)
    examples = ev.examples()
    if _is_main():
        storage.write_atomic(storage.path(workdir) / f'eval_step_{step:06d}.json', json.dumps(
            {'step': step, 'split': setup.spec.eval_split, 'max_examples': examples or 0,
             **metrics}, indent=2))
    used = f'the first {examples}' if examples else 'all of it'
    log(f'step {step}, {setup.spec.name}/{setup.spec.eval_split} ({used}): ' +
        ', '.join(f'{k} {v:.4f}' for k, v in metrics.items()))
    return metrics


def sample_command(cfg, workdir: str, num: int, seed: int) -> list[str]:
    """`dul-jax sample`: `num` samples (and pictures of as many eval examples, where the task
    makes them) from the latest checkpoint with `seed`; returns the paths."""
    setup, state = restore_latest(cfg, workdir)
    paths = write_samples(setup, state, workdir, int(state.step), num, seed)
    log('wrote ' + ', '.join(paths))
    return paths
