"""The one exception type for mistakes a user can fix.

The CLI prints its message (one sentence that says what to change) and exits with status 2,
without a traceback. Everything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A bad config, a missing data set, a corrupt checkpoint: something the user can change."""
