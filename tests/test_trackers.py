"""Trackers: each one reads back what the metric writer sent it (TensorBoard through its own
event reader, Weights & Biases in offline mode through its transaction log), a tracker of your
own plugs in by name, and bad names are refused before anything starts."""

import glob
import json
import os
import re
import struct
import sys

import numpy as np
import pytest

from dul_jax import cli
from dul_jax import config as config_lib
from dul_jax.errors import UserError
from dul_jax.train.writers import MetricWriter


def wandb_records(run_dir: str) -> list:
    """The protobuf records of a W&B run's transaction log (run-ID.wandb): LevelDB's log format,
    a 7-byte ':W&B' header, then 32 KiB blocks of chunks (crc32c, length, type; 1 full, 2 first,
    3 middle, 4 last)."""
    from wandb.proto import wandb_internal_pb2
    (path,) = glob.glob(os.path.join(run_dir, 'run-*.wandb'))
    with open(path, 'rb') as f:
        data = f.read()
    assert data[:4] == b':W&B'
    records, pos, pending = [], 7, b''
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:      # a block's tail too short for a header is padding
            pos += 32768 - pos % 32768
            continue
        length, kind = struct.unpack('<HB', data[pos + 4:pos + 7])
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            records.append(wandb_internal_pb2.Record.FromString(pending))
            pending = b''
    return records


def wandb_cfg(**wandb):
    cfg = config_lib.base_config()
    cfg.tracking.wandb.update({'mode': 'offline', **wandb})
    return cfg


@pytest.fixture
def quiet_wandb(tmp_path, monkeypatch):
    pytest.importorskip('wandb')
    for name in ('WANDB_CONFIG_DIR', 'WANDB_CACHE_DIR', 'WANDB_DATA_DIR'):
        monkeypatch.setenv(name, str(tmp_path / 'wandb_home'))
    monkeypatch.delenv('WANDB_MODE', raising=False)


def test_tensorboard_and_wandb_read_back_what_the_writer_sent(tmp_path, quiet_wandb):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    workdir = str(tmp_path / 'run')
    cfg = wandb_cfg(tags=('probe',))
    writer = MetricWriter(workdir, ('tensorboard', 'wandb'), cfg)
    writer.start()
    writer.write_hparams({'optim.lr': 0.01, 'model.embed_dim': 32})
    for step in (1, 2, 3, 4):
        writer.write(step, {'loss': 1.0 / step, 'grad_norm': float(step)})
    picture = np.arange(64, dtype=np.uint8).reshape(8, 8)
    writer.write_image(4, 'samples', picture)
    writer.close()
    # a resume from step 2: the rows after it are logged again, with other values
    writer = MetricWriter(workdir, ('tensorboard', 'wandb'), cfg)
    writer.start(2)
    writer.write(3, {'loss': 0.9, 'grad_norm': 30.0})
    writer.write_summary({'step': 3, 'eval/loss': 0.75})
    writer.close()

    with open(os.path.join(workdir, 'metrics.jsonl')) as f:
        assert [json.loads(line) for line in f] == [
            {'step': 1, 'loss': 1.0, 'grad_norm': 1.0}, {'step': 2, 'loss': 0.5, 'grad_norm': 2.0},
            {'step': 3, 'loss': 0.9, 'grad_norm': 30.0}]
    with open(os.path.join(workdir, 'summary.json')) as f:
        assert json.load(f) == {'step': 3, 'eval/loss': 0.75}

    # TensorBoard: the second writer's purge step hides the first run's steps 3 and 4
    events = EventAccumulator(os.path.join(workdir, 'tensorboard'),
                              size_guidance={'scalars': 0, 'images': 0}).Reload()
    assert [(e.step, round(e.value, 6)) for e in events.Scalars('loss')] == [
        (1, 1.0), (2, 0.5), (3, 0.9)]

    # W&B: one run id for both writers, so the resume goes on in the same W&B run
    with open(os.path.join(workdir, 'wandb_run_id')) as f:
        run_id = f.read().strip()
    first, second = sorted(glob.glob(os.path.join(workdir, 'wandb', 'offline-run-*')))
    # W&B names a run's folder by the second it started, adding -1 when that folder exists
    assert all(re.search(f'-{run_id}(-1)?$', d) for d in (first, second))
    before, after = wandb_records(first), wandb_records(second)

    def rows(records):
        return [{i.key or '/'.join(i.nested_key): json.loads(i.value_json)
                 for i in r.history.item} for r in records if r.HasField('history')]

    losses = [(r['step'], r['loss']) for r in rows(before) if 'loss' in r]
    assert losses == [(1, 1.0), (2, 0.5), (3, 1 / 3), (4, 0.25)]
    assert [(r['step'], r['loss']) for r in rows(after) if 'loss' in r] == [(3, 0.9)]
    image = next(r for r in rows(before) if 'samples/_type' in r)   # nested keys, one per item
    assert image['samples/_type'] == 'image-file' and image['step'] == 4
    assert image['samples/width'] == image['samples/height'] == 8
    (png,) = glob.glob(os.path.join(first, 'files', 'media', 'images', 'samples_*.png'))
    from PIL import Image
    np.testing.assert_array_equal(np.asarray(Image.open(png)), picture)
    config = {}
    for r in before:
        if r.HasField('config'):
            config.update({i.key: json.loads(i.value_json) for i in r.config.update})
    assert config['optim.lr'] == 0.01 and config['model.embed_dim'] == 32
    summary = {}
    for r in after:
        if r.HasField('summary'):
            summary.update({i.key: json.loads(i.value_json) for i in r.summary.update})
    assert summary['eval/loss'] == 0.75
    run = next(r.run for r in before if r.HasField('run'))
    assert run.run_id == run_id and run.project == 'dul_jax' and run.display_name == 'run'
    assert list(run.tags) == ['probe']


RECORDER = '''
from dul_jax.train.trackers import Tracker

class Recorder(Tracker):
    calls = []

    def scalars(self, step, values):
        self.calls.append(('scalars', step, values))

    def hparams(self, values):
        self.calls.append(('hparams', values['optim.lr'], self.cfg.tracking.trackers))

    def summary(self, values):
        self.calls.append(('summary', values))

    def rewind(self, step):
        self.calls.append(('rewind', step))

    def close(self):
        self.calls.append(('close', os.path.isdir(self.directory), self.workdir))
'''


def test_a_resume_in_the_same_second_keeps_the_earlier_tensorboard_events(tmp_path, monkeypatch):
    """tensorboardX names event files by the second: a resume in the same second must not
    truncate the first file (the clock is frozen here so both writers share a second)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboardX import event_file_writer

    class FrozenClock:
        time = staticmethod(lambda: 1_800_000_000.5)
    monkeypatch.setattr(event_file_writer, 'time', FrozenClock)
    workdir = str(tmp_path / 'run')
    for start, steps in ((None, (1, 2, 3, 4)), (2, (3,))):
        writer = MetricWriter(workdir, ('tensorboard',))
        writer.start(start or 0)
        for step in steps:
            writer.write(step, {'loss': 1.0 / step if start is None else 0.9})
        writer.close()
    assert len(os.listdir(os.path.join(workdir, 'tensorboard'))) >= 2
    events = EventAccumulator(os.path.join(workdir, 'tensorboard')).Reload()
    assert [(e.step, round(e.value, 6)) for e in events.Scalars('loss')] == [
        (1, 1.0), (2, 0.5), (3, 0.9)]


def test_a_tracker_of_your_own_plugs_in_by_module_and_class(tmp_path, monkeypatch):
    (tmp_path / 'my_trackers.py').write_text('import os\n' + RECORDER)
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = config_lib.base_config()
    cfg.tracking.trackers = ('my_trackers:Recorder',)
    config_lib.check_tracking(cfg)
    workdir = str(tmp_path / 'run')
    writer = MetricWriter(workdir, cfg.tracking.trackers, cfg)
    writer.start(4)
    writer.write_hparams(config_lib.flatten(cfg))
    writer.write(5, {'loss': 2.0})
    writer.write_summary({'eval/loss': 1.5})
    writer.close()
    assert sys.modules['my_trackers'].Recorder.calls == [
        ('rewind', 4), ('hparams', cfg.optim.lr, ('my_trackers:Recorder',)),
        ('scalars', 5, {'loss': 2.0}), ('summary', {'eval/loss': 1.5}), ('close', True, workdir)]
    assert os.path.isfile(os.path.join(workdir, 'metrics.jsonl'))   # always written beside it


@pytest.mark.parametrize('trackers, message', [
    (('tensorbord',), (r'tracking.trackers has "tensorbord"; each entry is "tensorboard", '
                       r'"wandb" or "package.module:TrackerClass"')),
    (('no_such_module_here:Tracker',), r'no module no_such_module_here can be imported'),
])
def test_bad_tracker_names_are_refused_in_one_sentence(trackers, message):
    cfg = config_lib.base_config()
    cfg.tracking.trackers = trackers
    with pytest.raises(UserError, match=message):
        config_lib.check_tracking(cfg)


def test_wandb_without_its_package_names_the_extra(monkeypatch, capsys):
    real = config_lib.importlib.util.find_spec
    monkeypatch.setattr(config_lib.importlib.util, 'find_spec',
                        lambda name, *a: None if name == 'wandb' else real(name, *a))
    # through the CLI: answered before the trainer's imports, exit status 2
    assert cli.main(['train', '--config', 'demo', '--workdir', 'unused',
                     "--config.tracking.trackers=('tensorboard', 'wandb')"]) == 2
    assert capsys.readouterr().err == (
        'error: tracking.trackers includes "wandb", but Weights & Biases is not installed; pip '
        "install 'dul_jax[wandb]' (or `pip install wandb`).\n")


def test_wandb_that_cannot_start_says_how_to_log_in(tmp_path, quiet_wandb, monkeypatch):
    monkeypatch.delenv('WANDB_API_KEY', raising=False)
    monkeypatch.setenv('HOME', str(tmp_path))           # no ~/.netrc with a key
    monkeypatch.setattr('sys.stdin', open(os.devnull))  # noqa: SIM115
    cfg = wandb_cfg(mode='online')
    with pytest.raises(UserError, match=r'Weights & Biases could not start a run \(.*\); log in '
                                        r'with `wandb login`, or set '
                                        r'--config.tracking.wandb.mode=offline'):
        MetricWriter(str(tmp_path / 'run'), ('wandb',), cfg).start()
