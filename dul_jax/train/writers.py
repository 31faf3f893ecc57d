"""Where metrics go: WORKDIR/metrics.jsonl (one JSON object per logged step) and TensorBoard events
in WORKDIR/tensorboard/; and what each process says, in WORKDIR/logs/process_<i>.log.

Only process 0 writes; on other processes the writer is a no-op, so callers need no checks. A
workdir on an object store (gs://) cannot be appended to, so both are written to a local staging
folder and uploaded whole at most every SYNC_S seconds, at each `sync()` and on close.
"""

import json
import math
import os
import sys
import tempfile
import time

import jax
import numpy as np

from dul_jax import storage

SYNC_S = 30.0


def parse_record(line: str) -> dict | None:
    """One metrics.jsonl line as its record, or None where it is not one (blank, or torn)."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) and isinstance(record.get('step'), int) else None


class MetricWriter:
    """Appends to WORKDIR/metrics.jsonl and writes WORKDIR/tensorboard/ (process 0 only)."""

    def __init__(self, workdir: str):
        self.enabled = jax.process_index() == 0
        self._jsonl = self._tb = self._staging = None
        if not self.enabled:
            return
        self.remote = storage.path(workdir)
        if storage.is_url(self.remote):
            self._staging = tempfile.TemporaryDirectory(prefix='dul_jax_metrics_')
            local = self._staging.name
            if (self.remote / 'metrics.jsonl').is_file():  # a resumed run appends to its rows
                with open(os.path.join(local, 'metrics.jsonl'), 'wb') as f:
                    f.write((self.remote / 'metrics.jsonl').read_bytes())
        else:
            local = os.fspath(self.remote)
        os.makedirs(local, exist_ok=True)
        self.local = local
        self._uploaded = {}          # staged file -> size when last uploaded
        self._last_sync = time.monotonic()
        self._jsonl = open(os.path.join(local, 'metrics.jsonl'), 'a', encoding='utf-8')  # noqa: SIM115
        from tensorboardX import SummaryWriter  # imported late: only process 0 needs it
        self._tb = SummaryWriter(os.path.join(local, 'tensorboard'))

    def drop_after(self, step: int) -> None:
        """Forget the records past `step` (a resumed run repeats the steps after its checkpoint),
        rewriting metrics.jsonl atomically. Lines that are not records (a write cut short by a
        full disk or a crash) are dropped with a warning rather than stopping every resume."""
        if not self.enabled:
            return
        path = self._jsonl.name
        self._jsonl.close()
        with open(path, encoding='utf-8', errors='replace') as f:
            lines = f.read().split('\n')
        kept, bad = [], []
        for number, line in enumerate(lines, 1):
            record = parse_record(line)
            if record is None and line.strip():
                bad.append(number)
            elif record is not None and record['step'] <= step:
                kept.append(line + '\n')
        if bad:
            shown = self.remote / 'metrics.jsonl'
            last = max(n for n, line in enumerate(lines, 1) if line.strip())
            if bad == [last]:
                print(f'warning: the last line of {shown} was cut short (a torn write); dropped '
                      'it.', file=sys.stderr)
            else:
                print(f'warning: line(s) {", ".join(map(str, bad))} of {shown} are not JSON '
                      f'records; dropped them and kept the {len(kept)} valid rows up to step '
                      f'{step}.', file=sys.stderr)
        storage.write_atomic(path, ''.join(kept))
        self._jsonl = open(path, 'a', encoding='utf-8')  # noqa: SIM115
        self.sync(force=True)

    def write(self, step: int, metrics: dict[str, float]) -> None:
        """One record {'step': step, **metrics}, flushed; non-finite values are written to the
        JSON as strings ("nan", "inf") and to TensorBoard as they are."""
        if not self.enabled:
            return
        clean = {k: float(v) for k, v in metrics.items()}
        record = {'step': int(step)}
        record.update({k: (v if math.isfinite(v) else str(v)) for k, v in clean.items()})
        self._jsonl.write(json.dumps(record) + '\n')
        self._jsonl.flush()
        for k, v in clean.items():
            self._tb.add_scalar(k, v, step)
        self.sync()

    def write_image(self, step: int, name: str, image: np.ndarray) -> None:
        """A uint8 (H, W) or (H, W, C) image (e.g. a grid of samples) to TensorBoard's images."""
        if not self.enabled:
            return
        self._tb.add_image(name, image, step, dataformats='HW' if image.ndim == 2 else 'HWC')
        self.sync()

    def write_hparams(self, hparams: dict, metrics=('loss', 'eval/loss')) -> None:
        """The run's config (flat keys) to TensorBoard's hparams tab, beside the named scalars."""
        if not self.enabled:
            return
        from tensorboardX.summary import hparams as hparams_summaries
        values = {k: v if isinstance(v, int | float | str | bool) else str(v)
                  for k, v in hparams.items()}
        # in this run's own event file (add_hparams would start a sub-run beside it)
        for summary in hparams_summaries(values, dict.fromkeys(metrics, 0.0)):
            self._tb.file_writer.add_summary(summary)
        self.sync()

    def sync(self, force: bool = False) -> None:
        """Upload the staged files that changed (a no-op for a local workdir)."""
        if not self.enabled or self._staging is None:
            return
        if not force and time.monotonic() - self._last_sync < SYNC_S:
            return
        self._tb.flush()
        for folder, _, files in os.walk(self.local):
            for name in files:
                local = os.path.join(folder, name)
                size = os.path.getsize(local)
                if self._uploaded.get(local) != size:
                    target = self.remote / os.path.relpath(local, self.local)
                    with open(local, 'rb') as f:
                        target.write_bytes(f.read())
                    self._uploaded[local] = size
        self._last_sync = time.monotonic()

    def close(self) -> None:
        """Close both files and upload what is staged (the writer is unusable after)."""
        if self.enabled:
            self._jsonl.close()
            self._tb.close()
            self.sync(force=True)
            if self._staging is not None:
                self._staging.cleanup()


class HostLog:
    """This process's own log, WORKDIR/logs/process_<i>.log: every process writes one, so a
    host's view of a multi-host run (its devices, its batch rows, why it stopped) is kept.
    Timestamped lines, appended; on gs:// staged locally and uploaded as MetricWriter does."""

    def __init__(self, workdir: str):
        name = f'process_{jax.process_index()}.log'
        self.remote = storage.path(workdir) / 'logs' / name
        self._staging = None
        if storage.is_url(self.remote):
            self._staging = tempfile.TemporaryDirectory(prefix='dul_jax_log_')
            local = os.path.join(self._staging.name, name)
            if self.remote.is_file():   # a resumed run goes on in the same log
                with open(local, 'wb') as f:
                    f.write(self.remote.read_bytes())
        else:
            local = os.fspath(self.remote)
            os.makedirs(os.path.dirname(local), exist_ok=True)
        self._file = open(local, 'a', encoding='utf-8')  # noqa: SIM115
        self._last_sync = time.monotonic()

    def write(self, message: str) -> None:
        stamp = time.strftime('%Y-%m-%d %H:%M:%S')
        self._file.write(''.join(f'{stamp} {line}\n' for line in message.splitlines()))
        self._file.flush()
        if self._staging is not None and time.monotonic() - self._last_sync > SYNC_S:
            self._upload()

    def _upload(self) -> None:
        with open(self._file.name, 'rb') as f:
            storage.write_atomic(self.remote, f.read())
        self._last_sync = time.monotonic()

    def close(self) -> None:
        self._file.close()
        if self._staging is not None:
            self._upload()
            self._staging.cleanup()
