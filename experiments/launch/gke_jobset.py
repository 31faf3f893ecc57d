"""Train on a multi-host TPU slice of a GKE cluster: a JobSet whose pods all run the same
`dul-jax train`.

  python experiments/launch/gke_jobset.py --image IMAGE --accelerator-type v5litepod-256 \\
      --config C --workdir gs://BUCKET/RUN [--topology 4x4x8] [--name N] [--max-restarts K] \\
      [--out FILE | --dry-run] [--config.KEY=VALUE ...]

Without --out or --dry-run it applies the manifest (`kubectl apply -f -`, to the cluster of
kubectl's current context; the cluster needs the JobSet controller and a TPU node pool of the
type). --out FILE only writes it; --dry-run prints it, then the equivalent `xpk workload create`
as a comment, then the kubectl command, and runs nothing.

IMAGE must hold this repository installed with the TPU wheels (`pip install -e '.[tpu]'`), with
its working directory at the repository root: --config is a path inside the image. One pod runs
per host (4 chips each); a pod that fails or is preempted fails its Job, and the JobSet then
restarts every pod (up to --max-restarts times), which resumes from the workdir's checkpoints.
"""

import argparse
import json
import math
import re

import common
from common import Runner

# gcloud's accelerator-type prefix: (GKE's node label for it, TensorCores per chip in the count)
KINDS = {'v5litepod': ('tpu-v5-lite-podslice', 1), 'v6e': ('tpu-v6e-slice', 1),
         'v5p': ('tpu-v5p-slice', 2), 'v4': ('tpu-v4-podslice', 2)}
CHIPS_PER_HOST = 4   # every multi-host slice of these kinds


def slice_shape(accelerator_type: str, topology: str) -> tuple[str, str, int, int]:
    """(GKE accelerator label, topology, hosts, chips per host) of e.g. v5litepod-256."""
    kind, _, count = accelerator_type.rpartition('-')
    label, cores_per_chip = KINDS.get(kind, ('', 0))
    chips = int(count) // cores_per_chip if label and count.isdigit() else 0
    if not chips:
        common.fail(f'--accelerator-type {accelerator_type!r} is not one of '
                    f'{", ".join(k + "-N" for k in KINDS)}.', 2)
    if not topology:
        if cores_per_chip == 2:   # 3-D tori: several shapes per chip count, so the user picks
            common.fail(f'{accelerator_type} needs --topology (AxBxC chips, e.g. 2x2x4).', 2)
        side = 2 ** (int(math.log2(chips)) // 2)   # v5e and v6e slices are 2-D: 16x16, 8x16, ...
        topology = f'{side}x{chips // side}'
    if math.prod(int(n) for n in topology.split('x')) != chips:
        common.fail(f'--topology {topology} does not have the {chips} chips of '
                    f'{accelerator_type}.', 2)
    # 2-D slices of up to 8 chips are one host with all of them
    per_host = chips if cores_per_chip == 1 and chips <= 8 else CHIPS_PER_HOST
    return label, topology, chips // per_host, per_host


def manifest(args, train: list[str]) -> str:
    label, topology, hosts, per_host = slice_shape(args.accelerator_type, args.topology)
    q = json.dumps   # a JSON string is a YAML scalar, quoted wherever YAML needs it
    return f"""\
# dul-jax on {args.accelerator_type}: {hosts} hosts x {per_host} chips ({label}, {topology})
apiVersion: jobset.x-k8s.io/v1alpha2
kind: JobSet
metadata:
  name: {args.name}
  annotations:
    # the whole slice on one node pool, and one slice per node pool
    alpha.jobset.sigs.k8s.io/exclusive-topology: cloud.google.com/gke-nodepool
spec:
  failurePolicy:
    maxRestarts: {args.max_restarts}
  replicatedJobs:
    - name: slice
      replicas: 1
      template:
        spec:
          parallelism: {hosts}
          completions: {hosts}
          # one failed or preempted pod fails the Job at once, so the JobSet restarts all pods
          backoffLimit: 0
          template:
            spec:
              restartPolicy: Never
              # time for the trainer to save a checkpoint on SIGTERM
              terminationGracePeriodSeconds: {args.grace_s}
              nodeSelector:
                cloud.google.com/gke-tpu-accelerator: {label}
                cloud.google.com/gke-tpu-topology: {topology}
              containers:
                - name: dul-jax
                  image: {q(args.image)}
                  command: [{", ".join(q(word) for word in train)}]
                  resources:
                    limits:
                      google.com/tpu: {per_host}
"""


def xpk_command(args, train: list[str]) -> list[str]:
    return ['xpk', 'workload', 'create', '--cluster', args.cluster, '--workload', args.name,
            '--docker-image', args.image, '--tpu-type', args.accelerator_type, '--num-slices',
            '1', '--max-restarts', str(args.max_restarts), '--termination-grace-period-seconds',
            str(args.grace_s), '--command', common.quote(train)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--image', required=True, help='e.g. us-docker.pkg.dev/P/REPO/dul-jax:TAG')
    parser.add_argument('--accelerator-type', required=True,
                        help=f'{", ".join(k + "-N" for k in KINDS)}, e.g. v5litepod-256')
    parser.add_argument('--topology', default='',
                        help='chips as AxB or AxBxC; derived for v5litepod and v6e')
    parser.add_argument('--config', required=True, help='a config file, as a path in the image')
    parser.add_argument('--workdir', required=True, help='gs://BUCKET/RUN')
    parser.add_argument('--name', default='dul-jax', help='the JobSet (workload) name')
    parser.add_argument('--max-restarts', type=int, default=10,
                        help='restarts of the whole set, after a preemption or a failure')
    parser.add_argument('--grace-s', type=int, default=120,
                        help='seconds a pod has after SIGTERM before it is killed')
    parser.add_argument('--cluster', default='CLUSTER', help='the GKE cluster, for the xpk line')
    parser.add_argument('--out', default='', help='write the manifest to FILE, apply nothing')
    parser.add_argument('--dry-run', action='store_true',
                        help='print the manifest and the commands, run nothing')
    args, overrides = common.split_overrides(parser, argv)
    common.require_gcs(args.workdir)
    if not re.fullmatch(r'[a-z]([-a-z0-9]{0,38}[a-z0-9])?', args.name):
        common.fail(f'--name {args.name!r} must be lower-case letters, digits and dashes, '
                    'starting with a letter (a Kubernetes name).', 2)
    train = common.train_command(args.config, args.workdir, overrides, 'tpu')
    text = manifest(args, train)
    if args.out and not args.dry_run:
        with open(args.out, 'w') as f:
            f.write(text)
        print(f'wrote {args.out}; apply it with: kubectl apply -f {args.out}')
        return
    if args.dry_run:
        print(text, end='')
        print(f'# {common.quote(xpk_command(args, train))}')
    Runner(args.dry_run).run(['kubectl', 'apply', '-f', '-'], stdin=text)


if __name__ == '__main__':
    main()
