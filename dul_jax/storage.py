"""Files anywhere: local folders or object-store URLs (gs://BUCKET/..., s3://...), via etils.epath.

Workdirs, sweep folders and report folders are strings on the command line; `path()` turns one
into an epath.Path (local ones made absolute). Object stores have no rename and no append, but an
upload replaces an object whole, so `write_atomic` uploads directly there and renames locally.
"""

import os

from etils import epath


def is_url(p) -> bool:
    """True for gs://, s3://, ... paths; False for local ones."""
    return '://' in os.fspath(p)


def path(p) -> epath.Path:
    """`p` as an epath.Path: a URL as it is, a local path absolute (~ expanded)."""
    text = os.fspath(p)
    return epath.Path(text if is_url(text) else os.path.abspath(os.path.expanduser(text)))


def write_atomic(p, data: str | bytes) -> epath.Path:
    """Write `data` to `p` so that a reader sees the old or the new contents, never a part."""
    p = path(p)
    p.parent.mkdir(parents=True, exist_ok=True)
    target = p if is_url(p) else p.parent / f'.{p.name}.tmp{os.getpid()}'
    if isinstance(data, bytes):
        target.write_bytes(data)
    else:
        target.write_text(data)
    if target != p:
        os.replace(target, p)
    return p


def read_text(p) -> str | None:
    """The text at `p`, or None where there is no such file."""
    p = path(p)
    return p.read_text() if p.is_file() else None
