"""Where metrics go: to the run's trackers (trackers.py: metrics.jsonl always, TensorBoard events
in WORKDIR/tensorboard/ by default, Weights & Biases or your own by `tracking.trackers`); and what
each process says, in WORKDIR/logs/process_<i>.log.

Only process 0 writes metrics; on other processes the writer is a no-op, so callers need no checks.
A workdir on an object store (gs://) cannot be appended to, so trackers write to a local staging
folder, uploaded whole at most every SYNC_S seconds, at each `sync()` and on close.
"""

import os
import shutil
import sys
import tempfile
import time

import jax
import numpy as np

from dul_jax import storage
from dul_jax.train import trackers as trackers_lib

SYNC_S = 30.0


class MetricWriter:
    """Fans metrics, images, hparams and the summary out to the run's trackers (process 0 only).
    `names` are `tracking.trackers` entries; cfg is the run's config (W&B and custom trackers
    read their settings from it)."""

    def __init__(self, workdir: str, names=('tensorboard',), cfg=None):
        self.enabled = jax.process_index() == 0
        self.trackers, self._staging = [], None   # the trackers begin at `start`
        if not self.enabled:
            return
        self.remote = storage.path(workdir)
        if storage.is_url(self.remote):
            self._staging = local = tempfile.mkdtemp(prefix='dul_jax_metrics_')
            if (self.remote / 'metrics.jsonl').is_file():  # a resumed run appends to its rows
                with open(os.path.join(local, 'metrics.jsonl'), 'wb') as f:
                    f.write((self.remote / 'metrics.jsonl').read_bytes())
        else:
            local = os.fspath(self.remote)
        os.makedirs(local, exist_ok=True)
        self.local = local
        self._uploaded = {}          # staged file -> size when last uploaded
        self._last_sync = time.monotonic()
        self._workdir, self._names, self._cfg = workdir, names, cfg

    def start(self, step: int = 0) -> None:
        """Start the trackers for a run that goes on from `step` (0: a fresh run), once its
        state is restored, so a refused resume starts none. A resumed run repeats the steps after
        `step`: each tracker forgets them if it can (metrics.jsonl is rewritten up to `step`)."""
        if not self.enabled:
            return
        self.trackers.append(trackers_lib.Jsonl(self.local, self._workdir, self._cfg))
        for name in dict.fromkeys(self._names):
            cls = trackers_lib.tracker_class(name)
            self.trackers.append(cls(self.local, self._workdir, self._cfg))
        if step:
            for tracker in self.trackers:
                tracker.rewind(step)
            self.sync(force=True)

    def write(self, step: int, metrics: dict[str, float]) -> None:
        """One logged step's metrics; non-finite values are kept (as strings in the JSON)."""
        self._each('scalars', int(step), {k: float(v) for k, v in metrics.items()})

    def write_image(self, step: int, name: str, image: np.ndarray) -> None:
        """A uint8 (H, W) or (H, W, C) image (e.g. a grid of samples)."""
        self._each('image', int(step), name, image)

    def write_hparams(self, hparams: dict) -> None:
        """The run's config (flat keys): TensorBoard's hparams tab, W&B's config."""
        self._each('hparams', hparams)

    def write_summary(self, metrics: dict[str, float]) -> None:
        """The run's final metrics: WORKDIR/summary.json, W&B's run summary."""
        self._each('summary', {k: v if isinstance(v, int) else float(v)
                               for k, v in metrics.items()})

    def _each(self, method: str, *args) -> None:
        for tracker in self.trackers:
            getattr(tracker, method)(*args)
        self.sync()

    def sync(self, force: bool = False) -> None:
        """Upload the staged files that changed (a no-op for a local workdir)."""
        if not self.enabled or self._staging is None:
            return
        if not force and time.monotonic() - self._last_sync < SYNC_S:
            return
        for tracker in self.trackers:
            tracker.flush()
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
        """Close every tracker and upload what is staged (the writer is unusable after)."""
        if not self.enabled:
            return
        for tracker in reversed(self.trackers):
            tracker.close()
        if self._staging is None:
            return
        # every file again, not just the changed ones: only an upload that succeeds now shows the
        # store holds them (a bucket deleted since the last upload took those copies with it)
        self._uploaded.clear()
        if _uploaded_or_kept(lambda: self.sync(force=True), self.remote, self._staging):
            shutil.rmtree(self._staging)


class HostLog:
    """This process's own log, WORKDIR/logs/process_<i>.log: every process writes one, so a
    host's view of a multi-host run (its devices, its batch rows, why it stopped) is kept.
    Timestamped lines, appended; on gs:// staged locally and uploaded as MetricWriter does."""

    def __init__(self, workdir: str):
        name = f'process_{jax.process_index()}.log'
        self.remote = storage.path(workdir) / 'logs' / name
        self._staging = None
        if storage.is_url(self.remote):
            self._staging = tempfile.mkdtemp(prefix='dul_jax_log_')
            local = os.path.join(self._staging, name)
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
        if self._staging is not None and _uploaded_or_kept(self._upload, self.remote,
                                                           self._staging):
            shutil.rmtree(self._staging)


def _uploaded_or_kept(upload, remote, staging: str) -> bool:
    """Run the last upload of a staging folder; if the store cannot take it (it went away),
    say where the files are kept instead of raising over the error that ended the run."""
    try:
        upload()
        return True
    except OSError as e:
        print(f'warning: could not upload to {remote} ({str(e).splitlines()[0]}); the files are '
              f'kept in {staging}.', file=sys.stderr)
        return False
