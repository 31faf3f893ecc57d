"""The two exception types the CLI turns into one sentence, without a traceback.

A `UserError` is a mistake the user can fix (bad config, missing data, an unwritable folder): the
CLI exits with status 2. A `WorldFailed` is the world failing under a correct command (a full
disk, a store that went away, a checkpoint write that failed): status 1. Everything else is a bug
and keeps its traceback.
"""

import errno
import re


class UserError(Exception):
    """A bad config, a missing data set, a corrupt checkpoint: something the user can change."""


class WorldFailed(Exception):
    """The machine or the store failed; the message says what was kept and how to go on."""


# EEXIST: mkdir(exist_ok=True) found a file where it was to make a folder
_USERS = (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EISDIR, errno.EEXIST)
_WORLDS = (errno.ENOSPC, errno.EDQUOT, errno.EIO)
_UNREACHABLE = (errno.ECONNREFUSED, errno.ECONNRESET, errno.ECONNABORTED, errno.ETIMEDOUT,
                errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ENETDOWN)
# gcsfs raises FileNotFoundError(URL) for a 404; GCS answers an upload so only where the bucket
# does not exist
_UPLOAD_TO = re.compile(r'/upload/storage/v1/b/([^/?]+)/o\b')


def from_os_error(error: OSError) -> Exception | None:
    """The one-sentence UserError (permissions, a read-only or wrong path) or WorldFailed (a
    full disk or quota, an I/O error, a store that cannot be reached, a bucket that is gone) for
    an OSError a command met; None for any other."""
    where = error.filename or 'a file'
    if error.errno in _USERS:
        return UserError(f'{where} cannot be written or read ({error.strerror}); pass a path you '
                         'can write to, or change its permissions.')
    if error.errno in _WORLDS:
        return WorldFailed(f'{where} could not be written ({error.strerror}); what was saved '
                           'before is kept: free space there and rerun the same command.')
    if error.errno in _UNREACHABLE:   # aiohttp's connector errors are OSErrors with the errno
        return WorldFailed(f'the storage could not be reached ({str(error).splitlines()[0]}); '
                           'what was saved before is kept: rerun the same command once it is '
                           'back.')
    gone = _UPLOAD_TO.search(str(error)) if isinstance(error, FileNotFoundError) else None
    if gone:
        return WorldFailed(f'the bucket gs://{gone[1]} does not exist (a write to it was answered '
                           '"not found"; a deleted bucket takes what it held with it): recreate '
                           'it and rerun the same command.')
    return None
