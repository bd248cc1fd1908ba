"""Errors a user can act on.

`UserError` is bad input: the CLI prints its message on one line and exits 2, the dashboard
shows it on the form. Anything else that escapes a run is a training failure (exit 1).
"""


class UserError(Exception):
    """Bad input or settings: what was wrong, where, and what to do instead."""
