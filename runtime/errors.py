"""User-facing errors: one plain sentence saying what is wrong and how to fix it."""


class StagevarError(Exception):
    """An error caused by the user's input (paths, options, artifacts), not by a bug.

    Command-line entry points print its message alone (no traceback) and exit non-zero.
    """
