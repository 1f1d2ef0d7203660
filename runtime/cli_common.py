"""Shared behaviour of the command-line entry points: user errors print one sentence, no traceback."""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Callable

from .errors import StagevarError, StagevarWarning


def _show_warning(fallback):
    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, StagevarWarning):
            print(f"warning: {message}", file=sys.stderr)
        else:
            fallback(message, category, filename, lineno, file, line)
    return show


def add_version(p: argparse.ArgumentParser) -> None:
    """`--version` on every command: the installed stagevar version."""
    from stagevar import __version__

    p.add_argument("--version", action="version", version=f"%(prog)s (stagevar) {__version__}")


def run_cli(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> int:
    """Run `main`; a StagevarError (bad input) prints `error: <sentence>` and exits 2, and a
    StagevarWarning prints one `warning: <sentence>` line."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default", StagevarWarning)
            previous = warnings.showwarning
            warnings.showwarning = _show_warning(previous)
            try:
                return main(argv)
            finally:
                warnings.showwarning = previous
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
