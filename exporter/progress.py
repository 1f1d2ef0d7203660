"""Light progress reporting for long CLI steps: a phase line with a live elapsed-time counter.

On a terminal the current line is redrawn twice a second (one small thread, nothing heavy);
elsewhere (CI logs, pipes) each phase prints one line when it starts and one when it ends.
"""

from __future__ import annotations

import sys
import threading
import time


class PhaseProgress:
    def __init__(self, total_phases: int, stream=None) -> None:
        self.total = total_phases
        self.stream = stream or sys.stderr
        self.live = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.index = 0
        self.current: str | None = None
        self.started = 0.0
        self.t0 = time.perf_counter()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.durations: dict[str, float] = {}

    def _line(self) -> str:
        elapsed = time.perf_counter() - self.started
        filled = int(20 * (self.index - 1) / max(self.total, 1))
        bar = "#" * filled + "." * (20 - filled)
        return f"[{bar}] {self.index}/{self.total} {self.current} {elapsed:5.1f}s"

    def _tick(self) -> None:
        while not self._stop.wait(0.5):
            self.stream.write("\r" + self._line())
            self.stream.flush()

    def phase(self, name: str) -> None:
        """Start a new phase (ending the previous one)."""
        self._end_current()
        self.index += 1
        self.current, self.started = name, time.perf_counter()
        if self.live:
            self._stop.clear()
            self._thread = threading.Thread(target=self._tick, daemon=True)
            self._thread.start()
        else:
            self.stream.write(f"{self.index}/{self.total} {name} ...\n")
            self.stream.flush()

    def _end_current(self, outcome: str = "done") -> None:
        if self.current is None:
            return
        took = time.perf_counter() - self.started
        if outcome == "done":
            self.durations[self.current] = self.durations.get(self.current, 0.0) + took
        if self.live and self._thread is not None:
            self._stop.set()
            self._thread.join()
            tail = "" if outcome == "done" else f" {outcome}"
            self.stream.write("\r" + self._line() + tail + "\n")
        else:
            self.stream.write(f"{self.index}/{self.total} {self.current} {outcome} after {took:.1f}s\n"
                              if outcome != "done" else f"{self.index}/{self.total} {self.current} done in {took:.1f}s\n")
        self.stream.flush()
        self.current = None

    def close(self) -> None:
        """End the current phase: "done", or, when called while an exception propagates (a
        `finally` block), "interrupted" (Ctrl-C) or "failed", never "done"."""
        exc = sys.exc_info()[0]
        if exc is None:
            self._end_current()
        else:
            self._end_current("interrupted" if issubclass(exc, KeyboardInterrupt) else "failed")
