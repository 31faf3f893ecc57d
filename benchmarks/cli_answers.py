"""How fast the CLI answers a mistake that needs no data or compile, beside `--version`.

    python benchmarks/cli_answers.py [--repeats N]

Runs each command N times (default 5) as a fresh `dul-jax` process from a temporary folder and
prints the median and the slowest wall time, the exit status and the first error line. Each
mistake should be answered before jax is imported.
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

CASES = [
    ('--version', ['--version']),
    ('unknown config key', ['train', '--config', 'demo', '--workdir', 'run', '--config.nope=1']),
    ('wrong value type', ['train', '--config', 'demo', '--workdir', 'run',
                          '--config.train.steps=many']),
    ('missing config file', ['train', '--config', 'nope.py', '--workdir', 'run']),
    ('unknown flag', ['train', '--config', 'demo', '--workdir', 'run', '--bogus']),
    ('missing required flag', ['train', '--config', 'demo']),
    ('unknown sub-command', ['trian']),
    ('unknown data set', ['data', 'prepare', 'no_such_set']),
    ('eval of a folder with no run', ['eval', '--workdir', 'run']),
]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--repeats', type=int, default=5)
    args = p.parse_args()
    exe = shutil.which('dul-jax') or os.path.join(os.path.dirname(sys.executable), 'dul-jax')
    with tempfile.TemporaryDirectory() as folder:
        print(f'{"mistake":30} {"median s":>9} {"max s":>7}  rc  first error line')
        for name, argv in CASES:
            times, proc = [], None
            for _ in range(args.repeats):
                start = time.perf_counter()
                proc = subprocess.run([exe, *argv], cwd=folder, capture_output=True, text=True,
                                      check=False)
                times.append(time.perf_counter() - start)
            said = next((line for line in proc.stderr.splitlines()
                         if line.startswith(('error', 'usage'))), proc.stdout.strip())
            print(f'{name:30} {statistics.median(times):9.2f} {max(times):7.2f}  '
                  f'{proc.returncode:2d}  {said[:90]}')


if __name__ == '__main__':
    main()
