"""Train on GPU nodes under SLURM: an sbatch script whose tasks all run the same `dul-jax train`.

  python experiments/launch/slurm.sbatch.py --nodes N --config C --workdir /shared/RUN \\
      [--gpus-per-node 8] [--process-per-gpu] [--job-name J] [--time T] [--partition P] \\
      [--account A] [--out FILE] [--dry-run] [--config.KEY=VALUE ...]

Without --dry-run it writes the script (--out, default JOB_NAME.sbatch) and submits it with
sbatch; --dry-run prints the script and the sbatch command and does neither. The repository, its
venv with the CUDA wheels (`make venv ACCEL=cuda12`) and the workdir must be on a filesystem that
every node sees (or the workdir on gs://). One process per node sees all its GPUs; with
--process-per-gpu each of the node's processes takes the GPU of its SLURM_LOCALID.

Preemption and time limits: the job may be requeued (--requeue), and --grace-s seconds before its
time limit SLURM signals the batch script, which passes SIGTERM on to the trainers (they save a
checkpoint and exit 0) and requeues the job; the requeued job resumes from the checkpoints. Logs,
in the repository: JOB-JOBID.out (the script) and JOB-JOBID-TASK.out (each task).
"""

import argparse
import os

import common
from common import REPO, Runner


def script(args, overrides: list[str]) -> str:
    config = os.path.abspath(args.config)
    if not os.path.isfile(config):
        common.fail(f'--config {args.config!r} is not a file.', 2)
    workdir = args.workdir if '://' in args.workdir else os.path.abspath(args.workdir)
    train = common.train_command(config, workdir, overrides, 'gpu')
    devices = '--config.distributed.local_device_ids'
    if args.process_per_gpu:
        # SLURM_LOCALID differs between the tasks: each task's own shell must expand it
        inner = f'exec {common.quote(train)} {devices}="($SLURM_LOCALID,)"'
        command = ['bash', '-c', inner]
    else:
        # on SLURM, JAX gives a process only the GPU numbered SLURM_LOCALID unless told them all
        gpus = ','.join(str(i) for i in range(args.gpus_per_node))
        command = [*train, f'{devices}=({gpus})']
    tasks = args.gpus_per_node if args.process_per_gpu else 1
    optional = [f'#SBATCH --{key}={value}' for key, value in (
        ('time', args.time), ('partition', args.partition), ('account', args.account)) if value]
    srun = common.quote(['srun', '--output=%x-%j-%t.out', *command])
    return '\n'.join([
        '#!/bin/bash',
        f'#SBATCH --job-name={args.job_name}',
        f'#SBATCH --nodes={args.nodes}',
        f'#SBATCH --ntasks-per-node={tasks}',
        f'#SBATCH --gpus-per-node={args.gpus_per_node}',
        *optional,
        f'#SBATCH --chdir={REPO}',
        '#SBATCH --output=%x-%j.out',
        '#SBATCH --requeue',
        f'#SBATCH --signal=B:TERM@{args.grace_s}',
        '# B: the signal comes to this script alone, which passes SIGTERM on to every task (they',
        '# save a checkpoint and exit 0), waits for them and requeues the job to resume.',
        'requeue() {',
        '  scancel --signal=TERM "$SLURM_JOB_ID"',
        '  wait "$trainers"',
        '  scontrol requeue "$SLURM_JOB_ID"',
        "  exit   # with scontrol's status, not that of the interrupted wait",
        '}',
        'trap requeue TERM',
        'source .venv/bin/activate',
        # in the background: bash runs a trap only between commands, and `wait` is one
        f'{srun} &',
        'trainers=$!',
        'wait "$trainers"',
        ''])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--nodes', type=int, required=True)
    parser.add_argument('--gpus-per-node', type=int, default=8)
    parser.add_argument('--process-per-gpu', action='store_true',
                        help='one process per GPU (default: one per node)')
    parser.add_argument('--config', required=True, help='a config file')
    parser.add_argument('--workdir', required=True, help='a folder every node sees, or gs://')
    parser.add_argument('--job-name', default='dul_jax')
    parser.add_argument('--time', default='', help="sbatch's time limit, e.g. 24:00:00")
    parser.add_argument('--partition', default='')
    parser.add_argument('--account', default='')
    parser.add_argument('--grace-s', type=int, default=120,
                        help='seconds before the time limit at which the trainers are stopped')
    parser.add_argument('--out', default='', help='the script file (default: JOB_NAME.sbatch)')
    parser.add_argument('--dry-run', action='store_true',
                        help='print the script and the sbatch command, write and run nothing')
    args, overrides = common.split_overrides(parser, argv)
    text = script(args, overrides)
    path = args.out or f'{args.job_name}.sbatch'
    if args.dry_run:
        print(text, end='')
    else:
        with open(path, 'w') as f:
            f.write(text)
    Runner(args.dry_run).run(['sbatch', path])


if __name__ == '__main__':
    main()
