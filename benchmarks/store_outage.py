"""The object store goes away mid-run: what `dul-jax train` says, and how soon it stops.

    python benchmarks/store_outage.py [--after S] [--ckpt_every N]

Starts the GCS emulator (tests/gcs_emulator.py) on 127.0.0.1, trains a tiny iGPT on digits into
gs://bucket/run with a checkpoint every N steps, kills the emulator (SIGKILL) S seconds after the
first checkpoint is committed, and prints: the exit status, seconds from the kill to the exit,
the stderr line count, how many tracebacks it holds, and its last line. Slow by nature (gcsfs and
tensorstore retry for minutes before giving up), so it lives here and not in the tests.
"""

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--after', type=float, default=10.0)
    p.add_argument('--ckpt_every', type=int, default=50)
    args = p.parse_args()
    port, folder = free_port(), tempfile.mkdtemp(prefix='store_outage_')
    emulator = subprocess.Popen([sys.executable, os.path.join(REPO, 'tests', 'gcs_emulator.py'),
                                 str(port), 'bucket'], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
    url = f'http://127.0.0.1:{port}'
    env = dict(os.environ, STORAGE_EMULATOR_HOST=url, TENSORSTORE_GCS_HTTP_URL=url,
               CLOUD_STORAGE_EMULATOR_ENDPOINT=url, GOOGLE_AUTH_TOKEN_FOR_TESTING='emulator',
               JAX_PLATFORMS='cpu')
    time.sleep(3)
    exe = shutil.which('dul-jax') or os.path.join(os.path.dirname(sys.executable), 'dul-jax')
    overrides = {'data.tfds_dir': os.path.join(folder, 'tfds'), 'model.num_layers': 1,
                 'model.embed_dim': 32, 'model.mlp_dim': 64, 'model.num_heads': 2,
                 'train.steps': 10**6, 'train.ckpt_every': args.ckpt_every,
                 'train.log_every': 10, 'train.eval_every': 0}
    with open(os.path.join(folder, 'stderr'), 'w+') as err:
        trainer = subprocess.Popen(
            [exe, 'train', '--config', 'demo', '--workdir', 'gs://bucket/run',
             *(f'--config.{k}={v}' for k, v in overrides.items())],
            stdout=subprocess.DEVNULL, stderr=err, env=env, cwd=folder)
        # the first checkpoint is committed: on GCS orbax writes this marker last (its
        # _CHECKPOINT_METADATA is there from the save's start)
        code = ('import sys, gcsfs; fs = gcsfs.GCSFileSystem(); '
                f'sys.exit(0 if fs.exists("bucket/run/checkpoints/{args.ckpt_every}/'
                'commit_success.txt") else 1)')
        probe = [sys.executable, '-c', code]
        while subprocess.run(probe, env=env, check=False, capture_output=True).returncode:
            if trainer.poll() is not None:
                sys.exit(f'the trainer ended before its first checkpoint; see {folder}/stderr')
            time.sleep(2)
        time.sleep(args.after)
        emulator.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        rc = trainer.wait()
        took = time.monotonic() - killed
        err.seek(0)
        lines = err.read().splitlines()
    print(f'exit status {rc}, {took:.0f} s after the kill; stderr: {len(lines)} lines, '
          f'{sum(line.startswith("Traceback") for line in lines)} tracebacks; last line:')
    print(lines[-1] if lines else '(none)')
    print(f'(full stderr in {folder}/stderr)')


if __name__ == '__main__':
    main()
