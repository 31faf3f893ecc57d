"""A two-process run stopped from outside: a preemption notice (SIGTERM to one process) makes
both save the same step and exit 0, and one process resumes it; a process killed without notice
ends the other within the heartbeat timeout, in one sentence, and the rerun resumes from the last
complete checkpoint. Every process keeps its own log in WORKDIR/logs/."""

import json
import os
import re
import signal
import time

import pytest
from conftest import REPO, free_port, start_cli

pytestmark = pytest.mark.integration

DEMO = str(REPO / 'experiments' / 'configs' / 'demo.py')
TINY = ['model.num_layers=1', 'model.num_heads=2', 'model.embed_dim=32', 'model.mlp_dim=64',
        'train.batch_size=16', 'train.log_every=1', 'train.ckpt_every=2', 'eval.max_examples=64',
        'sample.num=8']


def launch(workdir, tfds_dir, devices, extra=(), process=None, port=None):
    """`dul-jax train` on the tiny demo, alone or as process `process` of two."""
    distributed = [] if process is None else [
        'distributed.enabled=true', f'distributed.coordinator=127.0.0.1:{port}',
        'distributed.num_processes=2', f'distributed.process_id={process}',
        'distributed.heartbeat_timeout_s=10']
    items = TINY + [f'data.tfds_dir={tfds_dir}', *distributed, *extra]
    return start_cli('train', '--config', DEMO, '--workdir', workdir,
                     *[f'--config.{i}' for i in items],
                     XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}')


def logged_steps(workdir):
    path = os.path.join(workdir, 'metrics.jsonl')
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line)['step'] for line in f if '"loss"' in line]


def checkpoints(workdir):
    """The steps of the complete checkpoints (orbax renames a finished save to its step)."""
    found = os.path.join(workdir, 'checkpoints')
    return [int(n) for n in os.listdir(found) if n.isdigit()] if os.path.isdir(found) else []


def start_two_and_wait(workdir, tfds_dir, past_step=3):
    """Two processes training, once a checkpoint past `past_step` is complete."""
    port = free_port()
    procs = [launch(workdir, tfds_dir, 2, ['train.steps=100000'], i, port) for i in range(2)]
    deadline = time.monotonic() + 400
    while max(checkpoints(workdir), default=0) <= past_step:
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs), \
            [p.communicate()[1][-2000:] for p in procs if p.poll() is not None]
        time.sleep(0.5)
    return procs


def host_log(workdir, process):
    with open(os.path.join(workdir, 'logs', f'process_{process}.log')) as f:
        return f.read()


def test_preempted_then_killed_two_process_run_resumes_in_one_process(tmp_path, tfds_dir):
    workdir = str(tmp_path / 'run')
    # a preemption notice (SIGTERM) to process 1: both save the same step and exit 0
    procs = start_two_and_wait(workdir, tfds_dir, past_step=2)
    procs[1].send_signal(signal.SIGTERM)
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outputs]
    saved = [re.findall(r'preemption notice: saved a checkpoint at step (\d+)',
                        host_log(workdir, i)) for i in range(2)]
    assert len(saved[0]) == 1 and saved[0] == saved[1]
    step = int(saved[0][0])
    assert 'process 1 of 2: 2 cpu device(s), rows 8-15 of each global batch' in host_log(workdir, 1)

    # rerun, then process 1 killed without notice: process 0 stops within the heartbeat
    # timeout (10 s, beats every 2 s), well before JAX's own abort at 30 s, in one sentence
    procs = start_two_and_wait(workdir, tfds_dir, past_step=step)
    procs[1].kill()
    killed = time.monotonic()
    out, err = procs[0].communicate(timeout=120)
    waited = time.monotonic() - killed
    procs[1].communicate()
    assert f'resumed from {workdir}/checkpoints/{step}' in out
    assert procs[0].returncode == 1 and waited < 28, (waited, err[-2000:])
    last = err.strip().splitlines()[-1]
    assert re.fullmatch(r'process 1 has not been heard from for 1\d s: it died or lost its '
                        r'network, so process 0 stops too \(exit 1\); rerun the same command on '
                        r'every host to resume from the last complete checkpoint\.', last), last
    assert 'Check failure' not in err and last in host_log(workdir, 0)

    # one process with four devices resumes the newest complete two-process checkpoint
    complete = max(checkpoints(workdir))
    assert complete > step          # one the second run wrote
    one = launch(workdir, tfds_dir, 4, [f'train.steps={complete + 1}'])
    out, err = one.communicate(timeout=300)
    assert one.returncode == 0, err[-3000:]
    assert f'resumed from {workdir}/checkpoints/{complete}' in out
    assert 'saved by 2 process(es) and is resumed by 1' in err
    assert logged_steps(workdir) == list(range(1, complete + 2))   # each step once
    assert not os.path.exists(os.path.join(workdir, 'checkpoints_corrupt'))
