"""What the launch recipes share: running commands (or printing them under --dry-run), quoting,
`--config.KEY=VALUE` pass-through, and one-sentence errors. Standard library only, so that the
recipes run from any machine with Python, without the project installed.
"""

import os
import shlex
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# What makes `dul-jax train` a multi-process run that refuses to start without its accelerator.
DISTRIBUTED = '--config.distributed.enabled=true'


def fail(message: str, status: int = 1):
    """Stop with `error: MESSAGE` as the only line on stderr."""
    print(f'error: {message}', file=sys.stderr)
    sys.exit(status)


def quote(cmd: list[str]) -> str:
    return shlex.join(cmd)


def train_command(config: str, workdir: str, overrides: list[str], platform: str) -> list[str]:
    """The `dul-jax train` every process runs; ours come last, so they win over the user's."""
    return (['dul-jax', 'train', '--config', config, '--workdir', workdir, *overrides,
             DISTRIBUTED, f'--config.runtime.platform={platform}'])


def split_overrides(parser, argv: list[str] | None = None):
    """parse_known_args, keeping the extra `--config.KEY=VALUE` arguments for `dul-jax train`."""
    args, extra = parser.parse_known_args(argv)
    wrong = [a for a in extra if not (a.startswith('--config.') and '=' in a)]
    if wrong:
        fail(f'unknown argument {wrong[0]!r}; only --config.KEY=VALUE is passed on to '
             '`dul-jax train`.', 2)
    return args, extra


def require_gcs(workdir: str) -> None:
    """Hosts of a slice or a GKE node pool have no disk in common: checkpoints must be on GCS."""
    if not workdir.startswith('gs://'):
        fail(f'--workdir must be a gs:// path (got {workdir!r}): the hosts of a slice share no '
             'disk, so every one of them must read and write the same checkpoints on GCS.', 2)


class Runner:
    """Runs commands, or only prints them (one per line, shell-quoted) when `dry_run`."""

    def __init__(self, dry_run: bool):
        self.dry_run = dry_run

    def run(self, cmd: list[str], stdin: str | None = None) -> None:
        """Run `cmd` (feeding it `stdin`); stop with one sentence if it fails."""
        if self.dry_run:
            print(quote(cmd), flush=True)
            return
        print(f'+ {quote(cmd)}', file=sys.stderr, flush=True)
        code = self._call(cmd, stdin=stdin).returncode
        if code:
            fail(f'`{_short(cmd)}` failed with exit status {code}; its output is above.')

    def probe(self, cmd: list[str], dry: tuple[int, str, str]) -> tuple[int, str, str]:
        """Run a query and return (exit status, stdout, stderr) whatever the status; under
        --dry-run print it and return `dry`, the answer the dry run goes on with."""
        if self.dry_run:
            print(quote(cmd), flush=True)
            return dry
        done = self._call(cmd, capture_output=True)
        return done.returncode, done.stdout, done.stderr

    @staticmethod
    def _call(cmd, stdin=None, capture_output=False) -> subprocess.CompletedProcess:
        try:
            return subprocess.run(cmd, input=stdin, capture_output=capture_output, text=True,
                                  check=False)
        except FileNotFoundError:
            fail(f'`{cmd[0]}` is not installed or not on PATH.')
        except KeyboardInterrupt:   # Ctrl-C ends a log stream; no traceback for that
            sys.exit(130)


def _short(cmd: list[str]) -> str:
    """The command up to its first option, e.g. `gcloud compute tpus tpu-vm ssh`."""
    words = []
    for word in cmd:
        if word.startswith('-') or len(words) == 5:
            break
        words.append(word)
    return quote(words)
