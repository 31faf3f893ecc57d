"""Where metrics go: DIR/metrics.jsonl (one JSON object per logged step) and TensorBoard events.

Only process 0 writes; on other processes the writer is a no-op, so callers need no checks.
"""

import json
import math
import os

import jax


class MetricWriter:
    """Appends to WORKDIR/metrics.jsonl and writes WORKDIR/tensorboard/ (process 0 only)."""

    def __init__(self, workdir: str):
        self.enabled = jax.process_index() == 0
        self._jsonl = None
        self._tb = None
        if self.enabled:
            os.makedirs(workdir, exist_ok=True)
            # open for the writer's lifetime; close() closes it
            self._jsonl = open(os.path.join(workdir, 'metrics.jsonl'), 'a', encoding='utf-8')  # noqa: SIM115
            from tensorboardX import SummaryWriter  # imported late: only process 0 needs it
            self._tb = SummaryWriter(os.path.join(workdir, 'tensorboard'))

    def drop_after(self, step: int) -> None:
        """Forget the records past `step` (a resumed run repeats the steps after its checkpoint),
        rewriting metrics.jsonl atomically."""
        if not self.enabled:
            return
        path = self._jsonl.name
        self._jsonl.close()
        with open(path, encoding='utf-8') as f:
            kept = [line for line in f if line.strip() and json.loads(line)['step'] <= step]
        with open(path + '.tmp', 'w', encoding='utf-8') as f:
            f.writelines(kept)
        os.replace(path + '.tmp', path)
        self._jsonl = open(path, 'a', encoding='utf-8')  # noqa: SIM115

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

    def close(self) -> None:
        """Close both files (the writer is unusable after)."""
        if self.enabled:
            self._jsonl.close()
            self._tb.close()
