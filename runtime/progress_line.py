"""One self-rewriting progress line on a terminal (stderr), silent elsewhere.

CLIs that run the pipeline show where a request is (micro-batch, scale) while it works. Logs and
pipes get nothing (a redrawn line is noise there), nor does `--quiet`.
"""

from __future__ import annotations

import sys


class ProgressLine:
    def __init__(self, stream=None, quiet: bool = False) -> None:
        self.stream = stream or sys.stderr
        self.enabled = not quiet and hasattr(self.stream, "isatty") and self.stream.isatty()
        self._width = 0

    def show(self, text: str) -> None:
        if not self.enabled:
            return
        pad = max(0, self._width - len(text))
        self.stream.write("\r" + text + " " * pad)
        self.stream.flush()
        self._width = len(text)

    def clear(self) -> None:
        """Erase the line (before normal output, or at the end)."""
        if self.enabled and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()
            self._width = 0

    def scale_callback(self, label: str = ""):
        """A `progress(batch, batches, scale, scales)` callback for Pipeline calls."""
        def report(batch: int, batches: int, scale: int, scales: int) -> None:
            where = f"batch {batch + 1}/{batches} " if batches > 1 else ""
            self.show(f"{label}{where}scale {scale + 1}/{scales}")
        return report
