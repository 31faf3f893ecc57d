"""Experiment trackers: where a run's scalars, images, hparams and summary go.

`MetricWriter` (writers.py) fans each call out to the run's trackers: `Jsonl` always
(metrics.jsonl is the record that resume, sweeps and reports read), then those named in
`tracking.trackers`: 'tensorboard', 'wandb', or 'package.module:Class' for one of your own. A
tracker subclasses `Tracker`, is built as `Class(directory, workdir, cfg)` on process 0 only, and
overrides what it records; see docs/trackers.md.
"""

import importlib
import json
import math
import os
import secrets
import sys
import time

import numpy as np

from dul_jax import storage
from dul_jax.errors import UserError


class Tracker:
    """The interface: every method may be left as it is here (a no-op).

    `directory` is a local folder the tracker may write into (for a gs:// workdir, a staging
    folder uploaded every sync); `workdir` is the run's own folder (local or gs://), for small
    files read or written once; `cfg` is the run's config.
    """

    def __init__(self, directory: str, workdir: str, cfg):
        self.directory, self.workdir, self.cfg = directory, workdir, cfg

    def scalars(self, step: int, values: dict[str, float]) -> None:
        """One logged step's values (non-finite ones included, as floats)."""

    def image(self, step: int, name: str, image: np.ndarray) -> None:
        """A uint8 (H, W) or (H, W, C) image, e.g. a grid of samples."""

    def hparams(self, values: dict) -> None:
        """The run's config as flat dotted keys; called once per start or resume."""

    def summary(self, values: dict[str, float]) -> None:
        """The run's final metrics (the last eval); may be called again by a later resume."""

    def rewind(self, step: int) -> None:
        """A resumed run repeats the steps after `step`: forget them if the tracker can."""

    def flush(self) -> None:
        """Make what was written so far readable (before a gs:// upload)."""

    def close(self) -> None:
        """Flush and release; the tracker is not used after."""


class Jsonl(Tracker):
    """DIRECTORY/metrics.jsonl, one JSON object per logged step (non-finite values as strings),
    and DIRECTORY/summary.json; the rows past a resume's step are dropped on `rewind`."""

    def __init__(self, directory, workdir, cfg=None):
        super().__init__(directory, workdir, cfg)
        self.path = os.path.join(directory, 'metrics.jsonl')
        self._file = open(self.path, 'a', encoding='utf-8')  # noqa: SIM115

    def scalars(self, step, values):
        record = {'step': int(step)}
        record.update({k: (v if math.isfinite(v) else str(v)) for k, v in values.items()})
        self._file.write(json.dumps(record) + '\n')
        self._file.flush()

    def summary(self, values):
        storage.write_atomic(os.path.join(self.directory, 'summary.json'),
                             json.dumps(_finite_or_str(values), indent=1) + '\n')

    def rewind(self, step):
        """Rewrite metrics.jsonl atomically with the records up to `step`. Lines that are not
        records (a write cut short by a full disk or a crash) are dropped with a warning rather
        than stopping every resume."""
        self._file.close()
        with open(self.path, encoding='utf-8', errors='replace') as f:
            lines = f.read().split('\n')
        kept, bad = [], []
        for number, line in enumerate(lines, 1):
            record = parse_record(line)
            if record is None and line.strip():
                bad.append(number)
            elif record is not None and record['step'] <= step:
                kept.append(line + '\n')
        if bad:
            shown = storage.path(self.workdir) / 'metrics.jsonl'
            last = max(n for n, line in enumerate(lines, 1) if line.strip())
            if bad == [last]:
                print(f'warning: the last line of {shown} was cut short (a torn write); dropped '
                      'it.', file=sys.stderr)
            else:
                print(f'warning: line(s) {", ".join(map(str, bad))} of {shown} are not JSON '
                      f'records; dropped them and kept the {len(kept)} valid rows up to step '
                      f'{step}.', file=sys.stderr)
        storage.write_atomic(self.path, ''.join(kept))
        self._file = open(self.path, 'a', encoding='utf-8')  # noqa: SIM115

    def close(self):
        self._file.close()


class TensorBoard(Tracker):
    """Event files in DIRECTORY/tensorboard/ (tensorboardX). A rewind starts a writer whose
    purge_step makes TensorBoard hide the earlier events of the repeated steps."""

    def __init__(self, directory, workdir, cfg=None):
        super().__init__(directory, workdir, cfg)
        from tensorboardX import SummaryWriter
        # tensorboardX names its files by the second and host and opens them 'wb': a second
        # writer within the same second would truncate the first; a nanosecond suffix keeps
        # each file and sorts them in the order TensorBoard must read them
        self._new = lambda purge_step=None: SummaryWriter(
            os.path.join(directory, 'tensorboard'), purge_step=purge_step,
            filename_suffix=f'.{time.time_ns()}')
        self._tb = self._new()

    def scalars(self, step, values):
        for k, v in values.items():
            self._tb.add_scalar(k, v, step)

    def image(self, step, name, image):
        self._tb.add_image(name, image, step, dataformats='HW' if image.ndim == 2 else 'HWC')

    def hparams(self, values, metrics=('loss', 'eval/loss')):
        from tensorboardX.summary import hparams as hparams_summaries
        values = {k: v if isinstance(v, int | float | str | bool) else str(v)
                  for k, v in values.items()}
        # in this run's own event file (add_hparams would start a sub-run beside it)
        for summary in hparams_summaries(values, dict.fromkeys(metrics, 0.0)):
            self._tb.file_writer.add_summary(summary)

    def rewind(self, step):
        self._tb.close()
        self._tb = self._new(purge_step=step + 1)

    def flush(self):
        self._tb.flush()

    def close(self):
        self._tb.close()


class WandB(Tracker):
    """A Weights & Biases run (pip install 'dul_jax[wandb]'), its files in DIRECTORY/wandb/.

    The W&B run id is kept in WORKDIR/wandb_run_id, so a resumed run goes on in the same W&B
    run. W&B cannot forget rows: after a resume the repeated steps are logged again, and its
    charts plot them against `step` (defined as the x axis), where they overlay.
    """

    def __init__(self, directory, workdir, cfg):
        super().__init__(directory, workdir, cfg)
        import wandb
        settings = cfg.tracking.wandb
        id_path = storage.path(workdir) / 'wandb_run_id'
        run_id = (storage.read_text(id_path) or '').strip() or secrets.token_hex(6)
        os.makedirs(os.path.join(directory, 'wandb'), exist_ok=True)
        try:
            self.run = wandb.init(
                project=settings.project, entity=settings.entity or None,
                name=settings.name or os.path.basename(os.fspath(workdir).rstrip('/')),
                tags=list(settings.tags), mode=settings.mode or None, dir=directory,
                id=run_id, resume='allow', settings=wandb.Settings(console='off', quiet=True))
        except wandb.errors.Error as e:  # no login, no network in online mode, a bad entity
            raise UserError(f'Weights & Biases could not start a run ({e}); log in with `wandb '
                            'login`, or set --config.tracking.wandb.mode=offline and `wandb sync` '
                            'later.') from None
        storage.write_atomic(id_path, run_id + '\n')
        self.run.define_metric('step')
        self.run.define_metric('*', step_metric='step')
        self._wandb = wandb

    def scalars(self, step, values):
        self.run.log({'step': int(step), **values})

    def image(self, step, name, image):
        self.run.log({'step': int(step), name: self._wandb.Image(image)})

    def hparams(self, values):
        self.run.config.update(values, allow_val_change=True)

    def summary(self, values):
        self.run.summary.update(values)

    def close(self):
        self.run.finish()


def parse_record(line: str) -> dict | None:
    """One metrics.jsonl line as its record, or None where it is not one (blank, or torn)."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) and isinstance(record.get('step'), int) else None


def _finite_or_str(values: dict) -> dict:
    return {k: (v if not isinstance(v, float) or math.isfinite(v) else str(v))
            for k, v in values.items()}


def tracker_class(name: str) -> type:
    """The class a `tracking.trackers` entry names ('tensorboard', 'wandb' or 'module:Class')."""
    if name == 'tensorboard':
        return TensorBoard
    if name == 'wandb':
        return WandB
    module, _, attr = name.partition(':')
    cls = getattr(importlib.import_module(module), attr, None)
    if not isinstance(cls, type) or not issubclass(cls, Tracker):
        raise UserError(f'tracking.trackers names "{name}", but {module} has no Tracker subclass '
                        f'{attr}.')
    return cls
