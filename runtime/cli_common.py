"""Shared behaviour of the command-line entry points: user errors print one sentence, no traceback."""

from __future__ import annotations

import sys
from collections.abc import Callable

from .errors import StagevarError


def run_cli(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> int:
    """Run `main`; a StagevarError (bad input) prints `error: <sentence>` and exits 2."""
    try:
        return main(argv)
    except StagevarError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def not_yet(command: str, issue: str) -> Callable[[list[str] | None], int]:
    """An honest placeholder for a command whose implementation has not landed."""

    def main(argv: list[str] | None = None) -> int:
        print(
            f"{command} is not implemented yet ({issue}). "
            "Until then, `stagevar-reference` runs the eager reference sampler.",
            file=sys.stderr,
        )
        return 2

    return main
