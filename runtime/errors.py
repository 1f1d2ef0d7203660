"""User-facing errors: one plain sentence saying what is wrong and how to fix it."""


class StagevarError(Exception):
    """An error caused by the user's input (paths, options, artifacts), not by a bug.

    Command-line entry points print its message alone (no traceback) and exit non-zero.
    """


class StagevarWarning(UserWarning):
    """Something the user should know that did not stop the work (e.g. a truncated prompt).

    Command-line entry points print its message as one `warning: ...` line, without the source
    location Python's default warning format adds.
    """


def shown(value, limit: int = 40) -> str:
    """`repr(value)` for an error message, cut to `limit` characters: a message that echoes a
    client's input must not grow with it (a 1 MB field would give a 1 MB answer)."""
    text = f"{value:g}" if isinstance(value, float) else repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."
