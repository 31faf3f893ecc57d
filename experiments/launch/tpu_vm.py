"""Train on a Cloud TPU VM slice: every worker runs the same `dul-jax train`.

  python experiments/launch/tpu_vm.py create --name N --zone Z --accelerator-type v5litepod-256 \\
      --version V [--spot | --reserved]
  python experiments/launch/tpu_vm.py setup --name N --zone Z [--copy | --repo-url URL]
  python experiments/launch/tpu_vm.py train --name N --zone Z --config C \\
      --workdir gs://BUCKET/RUN [--config.KEY=VALUE ...]
  python experiments/launch/tpu_vm.py babysit (create's and train's arguments) [--poll-s S] \\
      [--max-restarts K]
  python experiments/launch/tpu_vm.py collect-logs --name N --zone Z --out DIR

Each takes --dry-run: print the commands, one per line, and run nothing. gcloud must be logged in
with a default project (`gcloud config set project P`); V is a TPU software version of the
accelerator (e.g. v2-alpha-tpuv5-lite for v5e).

setup puts the repository in ~/dul_jax on every worker and makes its venv with the TPU wheels
(`make venv ACCEL=tpu`). By default (--copy) it copies `git archive HEAD`: committed files only,
so commit what the run needs (the config included) first; --repo-url clones or pulls instead.

train starts `dul-jax train ... --config.distributed.enabled=true --config.runtime.platform=tpu`
in the background on every worker, each writing ~/dul_jax_logs/worker_HOSTNAME.log, then streams
worker 0's log (Ctrl-C stops the stream, not the run). The workdir must be on GCS. When the run
has reached its last step, the workers write WORKDIR/done.

babysit keeps a run going on spot capacity: it creates the slice if absent, sets it up, starts
train, then polls the slice; when it is preempted (or gone) it deletes and recreates it and starts
the same command again, which resumes from the workdir's checkpoints. It stops when WORKDIR/done
exists (then copies the logs into dul_jax_logs/NAME and deletes the slice) or after
--max-restarts recreations.
"""

import argparse
import json
import os
import shlex
import sys
import tempfile
import time

import common
from common import REPO, Runner

TPU_VM = ['gcloud', 'compute', 'tpus', 'tpu-vm']
LOGS = '~/dul_jax_logs'
# Unquoted in the remote shell, so that each worker names its own log.
WORKER_LOG = f'{LOGS}/worker_$(hostname).log'
# [d]: the pattern must not match the shell that runs pgrep, whose command line contains it.
TRAINER_RUNNING = "pgrep -f '[d]ul-jax train' >/dev/null"


def _where(args) -> list[str]:
    return [args.name, f'--zone={args.zone}']


def ssh(args, worker: str, command: str) -> list[str]:
    return [*TPU_VM, 'ssh', *_where(args), f'--worker={worker}', f'--command={command}']


def create(args, r: Runner, spot: bool) -> None:
    capacity = ['--spot'] if spot else ['--reserved'] if args.reserved else []
    r.run([*TPU_VM, 'create', *_where(args), f'--accelerator-type={args.accelerator_type}',
           f'--version={args.version}', *capacity])


def setup(args, r: Runner) -> None:
    python = shlex.quote(args.python)
    # A fresh VM's unattended upgrades hold the dpkg lock for a while: wait for it, not fail.
    apt = 'sudo apt-get -qq -o DPkg::Lock::Timeout=600'
    steps = [f'{apt} update', f'{apt} install -y git make {python}-venv']
    if args.repo_url:
        url = shlex.quote(args.repo_url)
        steps.append(f'if [ -d dul_jax ]; then git -C dul_jax pull --ff-only; '
                     f'else git clone {url} dul_jax; fi')
    else:
        tarball = os.path.join(tempfile.gettempdir(), f'dul_jax_{args.name}.tar.gz')
        r.run(['git', '-C', REPO, 'archive', '--format=tar.gz', '--prefix=dul_jax/', '-o',
               tarball, 'HEAD'])
        r.run([*TPU_VM, 'scp', tarball, f'{args.name}:dul_jax.tar.gz', f'--zone={args.zone}',
               '--worker=all'])
        steps.append('tar xzf dul_jax.tar.gz')   # over an older copy, keeping its .venv
    steps.append(f'cd dul_jax && make venv ACCEL=tpu PYTHON={python}')
    r.run(ssh(args, 'all', ' && '.join(steps)))


def start_training(args, r: Runner) -> None:
    """Start the same train command on every worker, in the background, logging per host."""
    train = common.train_command(repo_relative(args.config), args.workdir, args.overrides, 'tpu')
    mark = ['python', 'experiments/launch/tpu_vm.py', 'mark-done', '--workdir', args.workdir]
    job = shlex.quote(f'{common.quote(train)} && {common.quote(mark)}')
    r.run(ssh(args, 'all', f'cd ~/dul_jax && . .venv/bin/activate && mkdir -p {LOGS} && '
                           f'nohup sh -c {job} >> {WORKER_LOG} 2>&1 < /dev/null &'))


def train(args, r: Runner) -> None:
    start_training(args, r)
    if not r.dry_run:
        print('streaming worker 0\'s log; Ctrl-C stops the stream, the run goes on.',
              file=sys.stderr)
    r.run(ssh(args, '0', f'tail -F {WORKER_LOG}'))


def collect_logs(args, r: Runner, out: str) -> None:
    r.run(['mkdir', '-p', out])
    # every worker's log has its own name, so copying from all of them into one folder is safe
    r.run([*TPU_VM, 'scp', f'{args.name}:dul_jax_logs/*', out, f'--zone={args.zone}',
           '--worker=all'])


def node_state(args, r: Runner, dry: str | None) -> str | None:
    """READY, PREEMPTED, CREATING, ...; None if the slice does not exist; '' if gcloud failed
    otherwise (a network error, say: ask again at the next poll rather than recreate)."""
    answer = (0, dry, '') if dry else (1, '', 'NOT_FOUND')
    code, out, err = r.probe([*TPU_VM, 'describe', *_where(args), '--format=value(state)'],
                             dry=answer)
    if code == 0:
        return out.strip()
    return None if 'not_found' in err.lower() or 'not found' in err.lower() else ''


def trainer_stopped(args, r: Runner) -> bool:
    """True when no `dul-jax train` runs on worker 0 any more (pgrep's status 1)."""
    return r.probe(ssh(args, '0', TRAINER_RUNNING), dry=(0, '', ''))[0] == 1


def babysit(args, r: Runner) -> None:
    spot = not args.reserved
    delete = [*TPU_VM, 'delete', *_where(args), '--quiet']
    state = node_state(args, r, dry=None)
    if state == 'PREEMPTED':
        r.run(delete)
    if state in (None, 'PREEMPTED'):
        create(args, r, spot)
    if state != 'READY' or trainer_stopped(args, r):   # else an earlier babysit started it
        setup(args, r)
        start_training(args, r)
    restarts = 0
    while True:
        if not r.dry_run:
            time.sleep(args.poll_s)
        # the dry run goes on as if this poll found the slice preempted: one full cycle
        state = node_state(args, r, dry='PREEMPTED')
        stopped = state == 'READY' and trainer_stopped(args, r)
        # asked after the trainer, so that a run finishing in between counts as done
        if r.probe(['gcloud', 'storage', 'ls', f'{args.workdir}/done'], dry=(1, '', ''))[0] == 0:
            print(f'{args.workdir} is done; copying the logs and deleting the slice.',
                  file=sys.stderr)
            collect_logs(args, r, os.path.join('dul_jax_logs', args.name))
            r.run(delete)
            return
        if state in (None, 'PREEMPTED'):
            restarts += 1
            if restarts > args.max_restarts:
                common.fail(f'the slice was lost {restarts} times, more than --max-restarts '
                            f'{args.max_restarts}; rerun babysit to go on from the checkpoints.')
            if state is not None:
                r.run(delete)
            create(args, r, spot)
            setup(args, r)
            start_training(args, r)
            if r.dry_run:
                return
        elif stopped:   # and no done marker: a crash, or a stop that was no preemption
            common.fail(f'the trainer on worker 0 of {args.name} stopped before the run was '
                        f'done; its log: `tpu_vm.py collect-logs --name {args.name} --zone '
                        f'{args.zone} --out DIR`.')


def mark_done(args) -> None:
    """Runs on the workers, in the repository's venv, after `dul-jax train` exited 0: writes
    WORKDIR/done if the run finished (a SIGTERM also exits 0, after a checkpoint, unfinished).
    A finished run has its final eval in metrics.jsonl at step train.steps."""
    from dul_jax import storage  # on the workers only: the launcher itself needs no project

    root = storage.path(args.workdir)
    steps = json.loads((root / 'config.json').read_text())['train']['steps']
    text = storage.read_text(root / 'metrics.jsonl') or ''
    rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    if any(row['step'] == steps and any(k.startswith('eval/') for k in row) for row in rows):
        storage.write_atomic(root / 'done', f'step {steps}\n')


def repo_relative(config: str) -> str:
    """The config's path inside the repository: the workers run from their copy of it."""
    path = config if os.path.isabs(config) or os.path.exists(config) else os.path.join(
        REPO, config)
    relative = os.path.relpath(os.path.abspath(path), REPO)
    if relative.startswith('..') or not os.path.isfile(path):
        common.fail(f'--config {config!r} is not a file in this repository, and the workers '
                    'have only the repository.', 2)
    return relative


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest='command', required=True)

    def command(name, what, *, node=True):
        p = sub.add_parser(name, help=what)
        if node:
            p.add_argument('--dry-run', action='store_true',
                           help='print the commands, run nothing')
            p.add_argument('--name', required=True, help='the TPU VM (slice) name')
            p.add_argument('--zone', required=True, help='e.g. us-west4-a')
        return p

    def creating(p):
        p.add_argument('--accelerator-type', required=True, help='e.g. v5litepod-256')
        p.add_argument('--version', required=True, help='TPU software version, e.g. '
                       'v2-alpha-tpuv5-lite')
        capacity = p.add_mutually_exclusive_group()
        capacity.add_argument('--spot', action='store_true',
                              help="spot (preemptible) capacity; babysit's default")
        capacity.add_argument('--reserved', action='store_true', help='a reservation')

    def training(p):
        p.add_argument('--config', required=True, help='a config file in this repository')
        p.add_argument('--workdir', required=True, help='gs://BUCKET/RUN')

    def setting_up(p):
        source = p.add_mutually_exclusive_group()
        source.add_argument('--copy', action='store_true',
                            help='copy `git archive HEAD` of this checkout (the default)')
        source.add_argument('--repo-url', default='', help='git clone (or pull) this instead')
        p.add_argument('--python', default='python3.11',
                       help='the Python the venv is made with; the project needs 3.11 or newer, '
                            'newer than the python3 of Ubuntu 22.04 images')

    creating(command('create', 'create the slice'))
    setting_up(command('setup', 'put the repository and its venv on every worker'))
    training(command('train', 'start the run on every worker and stream worker 0\'s log'))
    p = command('babysit', 'keep a run going through preemptions until it is done')
    creating(p)
    training(p)
    setting_up(p)
    p.add_argument('--poll-s', type=float, default=120, help='seconds between polls')
    p.add_argument('--max-restarts', type=int, default=10, help='recreations at most')
    p = command('collect-logs', 'copy every worker\'s log into DIR')
    p.add_argument('--out', required=True, help='a local folder')
    p = command('mark-done', 'runs on the workers: write WORKDIR/done if the run finished',
                node=False)
    p.add_argument('--workdir', required=True)

    args, overrides = common.split_overrides(parser, argv)
    args.overrides = overrides
    if args.overrides and args.command not in ('train', 'babysit'):
        common.fail(f'{args.command} takes no --config.KEY=VALUE.', 2)
    if args.command in ('train', 'babysit'):
        common.require_gcs(args.workdir)
    if args.command == 'mark-done':
        return mark_done(args)
    r = Runner(args.dry_run)
    if args.command == 'create':
        create(args, r, args.spot)
    elif args.command == 'setup':
        setup(args, r)
    elif args.command == 'train':
        train(args, r)
    elif args.command == 'babysit':
        babysit(args, r)
    elif args.command == 'collect-logs':
        collect_logs(args, r, args.out)


if __name__ == '__main__':
    main()
