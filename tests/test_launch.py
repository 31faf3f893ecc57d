"""The launch recipes in experiments/launch/: the commands their --dry-run prints (nothing runs),
and the shell they generate, run here against stand-ins for gcloud's workers and for srun."""

import json
import os
import pathlib
import shlex
import signal
import socket
import subprocess
import sys
import time

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
LAUNCH = REPO / 'experiments' / 'launch'
CONFIG = 'experiments/configs/demo.py'
WORKDIR = 'gs://bucket/run'
SLICE = ['--name', 'n1', '--zone', 'us-west4-a']
CREATE = ['--accelerator-type', 'v5litepod-256', '--version', 'v2-alpha-tpuv5-lite']
TRAIN = ['--config', CONFIG, '--workdir', WORKDIR, '--config.train.steps=7']
# what every TPU worker must run
TPU_TRAIN = ['dul-jax', 'train', '--config', CONFIG, '--workdir', WORKDIR,
             '--config.train.steps=7', '--config.distributed.enabled=true',
             '--config.runtime.platform=tpu']
LOG = '~/dul_jax_logs/worker_$(hostname).log'
pytestmark = pytest.mark.integration


def launch(script: str, *args: str, status: int = 0) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, str(LAUNCH / script), *args], capture_output=True,
                          text=True, cwd=REPO, timeout=60, check=False)
    assert done.returncode == status, done.stderr
    return done


def commands(stdout: str) -> list[list[str]]:
    return [shlex.split(line) for line in stdout.splitlines()]


def option(cmd: list[str], name: str) -> str | None:
    """The value of `--name=VALUE` in cmd."""
    values = [word.split('=', 1)[1] for word in cmd if word.startswith(f'--{name}=')]
    return values[0] if values else None


def kind(cmd: list[str]) -> str:
    """'create', 'describe', ... for gcloud's TPU VM verbs; 'train' or 'setup' for an ssh."""
    if cmd[:4] == ['gcloud', 'compute', 'tpus', 'tpu-vm']:
        if cmd[4] == 'ssh':
            remote = option(cmd, 'command')
            return ('pgrep' if 'pgrep' in remote else 'train' if 'dul-jax train' in remote
                    else 'setup')
        return cmd[4]
    return ' '.join(cmd[:3]) if cmd[0] == 'gcloud' else cmd[0]


def worker_job(cmd: list[str]) -> tuple[list[str], list[str]]:
    """(the train command, what follows `sh -c JOB`) of a train ssh."""
    words = shlex.split(option(cmd, 'command'))
    at = words.index('nohup')
    assert words[at + 1:at + 3] == ['sh', '-c']
    job = shlex.split(words[at + 3])
    return job[:job.index('&&')], words[at + 4:]


def test_tpu_vm_train_starts_one_command_on_every_worker_and_streams_worker_0():
    start, tail = commands(launch('tpu_vm.py', 'train', *SLICE, *TRAIN, '--dry-run').stdout)
    assert start[:6] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'ssh', 'n1']
    assert option(start, 'zone') == 'us-west4-a' and option(start, 'worker') == 'all'
    train, rest = worker_job(start)
    assert train == TPU_TRAIN
    assert rest == ['>>', LOG, '2>&1', '<', '/dev/null', '&']   # per host, in the background
    assert option(tail, 'worker') == '0' and option(tail, 'command') == f'tail -F {LOG}'


def test_tpu_vm_worker_command_runs_in_a_shell(tmp_path):
    """The remote command, run by a real shell in a fake home: the exact train arguments reach
    dul-jax, the log is named after the host, and mark-done follows a successful train."""
    start, _ = commands(launch('tpu_vm.py', 'train', *SLICE, *TRAIN, '--dry-run').stdout)
    fake_bin = tmp_path / 'bin'
    fake_bin.mkdir()
    for name in ('dul-jax', 'python'):
        (fake_bin / name).write_text(f'#!/bin/sh\necho {name}; printf "%s\\n" "$@"\n')
        (fake_bin / name).chmod(0o755)
    venv = tmp_path / 'dul_jax' / '.venv' / 'bin'
    venv.mkdir(parents=True)
    (venv / 'activate').write_text(f'PATH={fake_bin}:$PATH\n')
    subprocess.run(['bash', '-c', option(start, 'command')], check=True, timeout=30,
                   env={**os.environ, 'HOME': str(tmp_path)})
    log = tmp_path / 'dul_jax_logs' / f'worker_{socket.gethostname()}.log'
    expected = len(TPU_TRAIN) + 5
    for _ in range(200):   # the job runs in the background
        if log.is_file() and len(log.read_text().splitlines()) >= expected:
            break
        time.sleep(0.05)
    lines = log.read_text().splitlines()
    assert len(lines) == expected
    assert lines[:len(TPU_TRAIN)] == TPU_TRAIN
    assert lines[len(TPU_TRAIN):] == ['python', 'experiments/launch/tpu_vm.py', 'mark-done',
                                      '--workdir', WORKDIR]


def test_tpu_vm_babysit_cycle_recreates_the_slice_and_reruns_the_same_train():
    cmds = commands(launch('tpu_vm.py', 'babysit', *SLICE, *CREATE, *TRAIN,
                           '--dry-run').stdout)
    setup = ['git', 'scp', 'setup']
    assert [kind(c) for c in cmds] == [
        'describe', 'create', *setup, 'train',        # the slice is absent: make it, start
        'describe', 'gcloud storage ls', 'delete',    # one poll: preempted, not done
        'create', *setup, 'train']                    # again, the same command
    first, again = [c for c in cmds if kind(c) == 'train']
    assert first == again and worker_job(first)[0] == TPU_TRAIN
    assert option(first, 'worker') == 'all'
    creates = [c for c in cmds if kind(c) == 'create']
    assert all('--spot' in c and option(c, 'accelerator-type') == 'v5litepod-256'
               for c in creates)
    assert option(cmds[6], 'format') == 'value(state)'
    assert cmds[7][-1] == f'{WORKDIR}/done'
    # setup copies HEAD to every worker and makes the TPU venv there
    scp = next(c for c in cmds if kind(c) == 'scp')
    assert option(scp, 'worker') == 'all' and scp[6] == 'n1:dul_jax.tar.gz'
    assert option(cmds[4], 'command').endswith(
        ' && tar xzf dul_jax.tar.gz && cd dul_jax && make venv ACCEL=tpu PYTHON=python3.11')
    assert option(cmds[4], 'worker') == 'all'


def test_tpu_vm_setup_from_a_repo_url_and_collect_logs(tmp_path):
    setup, = commands(launch('tpu_vm.py', 'setup', *SLICE, '--repo-url', 'https://h/r.git',
                             '--dry-run').stdout)
    assert option(setup, 'worker') == 'all'
    assert option(setup, 'command').endswith(
        'else git clone https://h/r.git dul_jax; fi && cd dul_jax && make venv ACCEL=tpu '
        'PYTHON=python3.11')
    out = str(tmp_path / 'logs')
    mkdir, scp = commands(launch('tpu_vm.py', 'collect-logs', *SLICE, '--out', out,
                                 '--dry-run').stdout)
    assert mkdir == ['mkdir', '-p', out]
    assert scp[4:7] == ['scp', 'n1:dul_jax_logs/*', out] and option(scp, 'worker') == 'all'


# gcloud for the real (not dry) runs: logs its arguments; the slice is absent at first, then
# preempted, then READY; the run is done from the fourth describe on
FAKE_GCLOUD = """\
import json, os, sys
args = sys.argv[1:]
with open(os.environ['FAKE_CALLS'], 'a') as f:
    f.write(json.dumps(args) + '\\n')
with open(os.environ['FAKE_CALLS']) as f:
    describes = sum('describe' in json.loads(line) for line in f)
if 'describe' in args:
    if describes == 1:
        sys.exit('ERROR: (gcloud.compute.tpus.tpu-vm.describe) NOT_FOUND: n1')
    print('PREEMPTED' if describes == 2 else 'READY')
elif args[:2] == ['storage', 'ls']:
    sys.exit(0 if describes >= 4 else 1)
elif 'create' in args and os.environ.get('FAKE_FAIL'):
    sys.exit(3)
"""


def real_run(tmp_path, *args, status=0, **env) -> tuple[list[list[str]], str]:
    """(gcloud's calls, stderr) of a recipe run for real, against FAKE_GCLOUD."""
    fake_bin = tmp_path / 'bin'
    fake_bin.mkdir(exist_ok=True)
    (fake_bin / 'gcloud').write_text(f'#!{sys.executable}\n{FAKE_GCLOUD}')
    (fake_bin / 'gcloud').chmod(0o755)
    calls = tmp_path / 'calls'
    done = subprocess.run(
        [sys.executable, str(LAUNCH / 'tpu_vm.py'), *args], cwd=tmp_path, capture_output=True,
        text=True, timeout=60, check=False,
        env={**os.environ, 'PATH': f'{fake_bin}:{os.environ["PATH"]}', 'FAKE_CALLS': str(calls),
             **env})
    assert done.returncode == status, done.stderr
    return [json.loads(line) for line in calls.read_text().splitlines()], done.stderr


def test_tpu_vm_babysit_for_real_until_done(tmp_path):
    """The loop itself, with gcloud faked: a restart after the preemption, polls while the
    trainer runs, and at the done marker the logs are copied and the slice deleted."""
    args = ['babysit', *SLICE, *CREATE, '--repo-url', 'https://h/r.git', *TRAIN, '--poll-s', '0']
    printed = commands(launch('tpu_vm.py', *args, '--dry-run').stdout)
    calls, _ = real_run(tmp_path, *args)
    calls = [['gcloud', *c] for c in calls]
    assert [kind(c) for c in calls] == [
        'describe', 'create', 'setup', 'train',
        'describe', 'gcloud storage ls', 'delete', 'create', 'setup', 'train',   # preempted
        'describe', 'pgrep', 'gcloud storage ls',                               # running
        'describe', 'pgrep', 'gcloud storage ls',                               # done
        'scp', 'delete']
    assert calls[:10] == printed   # the real run runs what the dry run printed
    assert (tmp_path / 'dul_jax_logs' / 'n1').is_dir()


def test_a_failed_command_stops_with_one_sentence(tmp_path):
    calls, stderr = real_run(tmp_path, 'create', *SLICE, *CREATE, status=1, FAKE_FAIL='1')
    assert len(calls) == 1
    assert stderr.splitlines()[-1] == ('error: `gcloud compute tpus tpu-vm create` failed with '
                                       'exit status 3; its output is above.')


@pytest.mark.parametrize('recipe', [
    ('tpu_vm.py', 'train', *SLICE),
    ('tpu_vm.py', 'babysit', *SLICE, *CREATE),
    ('gke_jobset.py', '--image', 'img', '--accelerator-type', 'v5litepod-16')])
def test_a_local_workdir_is_refused_in_one_line(recipe):
    done = launch(*recipe, '--config', CONFIG, '--workdir', 'runs/x', '--dry-run', status=2)
    assert done.stdout == ''
    assert len(done.stderr.splitlines()) == 1 and 'gs://' in done.stderr


@pytest.mark.parametrize('accelerator, topology, label, hosts, chips', [
    ('v5litepod-256', '16x16', 'tpu-v5-lite-podslice', 64, 4),
    ('v6e-32', '4x8', 'tpu-v6e-slice', 8, 4),
    ('v5p-128', '4x4x4', 'tpu-v5p-slice', 16, 4),
    ('v5litepod-8', '2x4', 'tpu-v5-lite-podslice', 1, 8)])
def test_gke_jobset_manifest(accelerator, topology, label, hosts, chips):
    yaml = pytest.importorskip('yaml')
    given = ['--topology', topology] if accelerator.startswith('v5p') else []
    out = launch('gke_jobset.py', '--image', 'reg/dul-jax:1', '--accelerator-type', accelerator,
                 *given, *TRAIN, '--dry-run').stdout
    text, xpk_line, apply_line = out.rsplit('\n', 3)[:3]
    assert apply_line == 'kubectl apply -f -'
    jobset = yaml.safe_load(text)
    assert jobset['kind'] == 'JobSet' and jobset['spec']['failurePolicy']['maxRestarts'] > 0
    job, = jobset['spec']['replicatedJobs']
    # one slice: one Job of `hosts` pods, failed by any pod so that the JobSet restarts all
    assert job['replicas'] == 1
    assert job['template']['spec']['parallelism'] == hosts
    assert job['template']['spec']['completions'] == hosts
    assert job['template']['spec']['backoffLimit'] == 0
    pod = job['template']['spec']['template']['spec']
    assert pod['nodeSelector'] == {'cloud.google.com/gke-tpu-accelerator': label,
                                   'cloud.google.com/gke-tpu-topology': topology}
    container, = pod['containers']
    assert container['image'] == 'reg/dul-jax:1'
    assert container['resources']['limits'] == {'google.com/tpu': chips}
    assert container['command'] == TPU_TRAIN
    assert xpk_line.startswith('# ')
    xpk = shlex.split(xpk_line[2:])
    assert xpk[:3] == ['xpk', 'workload', 'create']
    assert xpk[xpk.index('--tpu-type') + 1] == accelerator
    assert shlex.split(xpk[xpk.index('--command') + 1]) == TPU_TRAIN


def test_gke_jobset_needs_the_topology_of_a_3d_slice():
    done = launch('gke_jobset.py', '--image', 'i', '--accelerator-type', 'v5p-128', *TRAIN,
                  '--dry-run', status=2)
    assert '--topology' in done.stderr


def sbatch(*args: str) -> tuple[list[str], list[str]]:
    """(the script's lines, the sbatch command) of a dry run on 4 nodes."""
    lines = launch('slurm.sbatch.py', '--nodes', '4', '--config', CONFIG, '--workdir',
                   '/shared/run', *args, '--dry-run').stdout.splitlines()
    return lines[:-1], shlex.split(lines[-1])


def srun_line(lines: list[str]) -> list[str]:
    srun, = [shlex.split(line) for line in lines if line.startswith('srun ')]
    assert srun[-1] == '&' and srun[1] == '--output=%x-%j-%t.out'
    return srun[2:-1]


GPU_TRAIN = ['dul-jax', 'train', '--config', str(REPO / CONFIG), '--workdir', '/shared/run',
             '--config.distributed.enabled=true', '--config.runtime.platform=gpu']


def test_sbatch_one_process_per_node():
    lines, submit = sbatch()
    for directive in ('--nodes=4', '--ntasks-per-node=1', '--gpus-per-node=8', '--requeue',
                      '--signal=B:TERM@120', '--output=%x-%j.out'):
        assert f'#SBATCH {directive}' in lines
    assert 'trap requeue TERM' in lines
    # every process names all 8 GPUs: on SLURM JAX would otherwise give it SLURM_LOCALID's only
    assert srun_line(lines) == [
        *GPU_TRAIN, '--config.distributed.local_device_ids=(0,1,2,3,4,5,6,7)']
    assert submit == ['sbatch', 'dul_jax.sbatch']


def fake_commands(tmp_path, **scripts: str) -> dict:
    """Executables NAME=BODY in tmp_path/bin, activated by tmp_path/.venv/bin/activate."""
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir()
    for name, body in scripts.items():
        (bin_dir / name.replace('_', '-')).write_text(f'#!/bin/bash\n{body}\n')
        (bin_dir / name.replace('_', '-')).chmod(0o755)
    (tmp_path / '.venv' / 'bin').mkdir(parents=True)
    (tmp_path / '.venv' / 'bin' / 'activate').write_text(f'PATH={bin_dir}:$PATH\n')
    return {**os.environ, 'SLURM_JOB_ID': '42', 'SLURM_LOCALID': '0', 'LOGS': str(tmp_path)}


# srun as one task of local id 3 on this host: drop srun's options, run the rest
FAKE_SRUN = 'while [[ $1 == --* ]]; do shift; done; SLURM_LOCALID=3 exec "$@"'


def test_sbatch_one_process_per_gpu_takes_its_gpu_from_slurm_localid(tmp_path):
    lines, _ = sbatch('--process-per-gpu')
    assert '#SBATCH --ntasks-per-node=8' in lines and '#SBATCH --requeue' in lines
    assert srun_line(lines)[:2] == ['bash', '-c']
    # run the script: the task's shell (SLURM_LOCALID=3), not the batch shell (0), expands it
    env = fake_commands(tmp_path, srun=FAKE_SRUN, dul_jax='printf "%s\\n" "$@"')
    done = subprocess.run(['bash', '-c', '\n'.join(lines)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=30, check=True)
    assert done.stdout.splitlines() == [
        *GPU_TRAIN[1:], '--config.distributed.local_device_ids=(3,)']


def test_sbatch_script_passes_sigterm_to_the_trainers_and_requeues(tmp_path):
    """The time-limit signal reaches the batch shell; the trainer gets SIGTERM, and the job is
    requeued after it exited."""
    lines, _ = sbatch()
    env = fake_commands(
        tmp_path, srun=FAKE_SRUN,
        # a trainer that saves and exits 0 on SIGTERM
        dul_jax='trap "echo saved >> $LOGS/log; exit 0" TERM; echo $$ > $LOGS/pid\n'
                'while true; do sleep 0.05; done',
        scancel='echo "scancel $*" >> $LOGS/log; kill -TERM "$(cat $LOGS/pid)"',
        scontrol='echo "scontrol $*" >> $LOGS/log')
    job = subprocess.Popen(['bash', '-c', '\n'.join(lines)], cwd=tmp_path, env=env)
    try:
        for _ in range(200):
            if (tmp_path / 'pid').is_file():
                break
            time.sleep(0.05)
        os.kill(job.pid, signal.SIGTERM)
        assert job.wait(timeout=30) == 0
    finally:
        if job.poll() is None:
            job.kill()
    assert (tmp_path / 'log').read_text().splitlines() == [
        'scancel --signal=TERM 42', 'saved', 'scontrol requeue 42']


@pytest.mark.parametrize('finished', [True, False])
def test_mark_done_only_after_the_final_eval(tmp_path, finished):
    """A SIGTERM also ends `dul-jax train` with status 0; only a finished run has its final
    eval at step train.steps, and only then is WORKDIR/done written."""
    (tmp_path / 'config.json').write_text(json.dumps({'train': {'steps': 5}}))
    rows = [{'step': 5, 'train/loss': 1.0}] + ([{'step': 5, 'eval/loss': 1.5}] if finished
                                               else [])
    (tmp_path / 'metrics.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in rows))
    launch('tpu_vm.py', 'mark-done', '--workdir', str(tmp_path))
    assert (tmp_path / 'done').is_file() == finished
