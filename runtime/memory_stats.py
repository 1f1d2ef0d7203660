"""Peak resident memory per benchmarked section (per stage plan), numpy-free and torch-free.

`getrusage` only knows the peak of the whole process. On Linux the kernel's own peak ("VmHWM" in
/proc/self/status) can be reset to the current RSS by writing "5" to /proc/self/clear_refs, so each
plan's figure is the highest RSS reached while that plan ran (weights and sessions already loaded
included), not the run's overall maximum. Where the reset is not available the figure falls back
to the process peak so far, and `PeakRss.method` says so.

The reset also resets what `getrusage` reports as the process peak, so code that resets keeps the
whole-run maximum itself (`PeakRss.overall_mb`).
"""

from __future__ import annotations

import sys
from pathlib import Path

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_mb(field: str) -> float | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB
    except (OSError, ValueError, IndexError):
        return None
    return None


def current_rss_mb() -> float | None:
    return _status_mb("VmRSS")


def process_peak_rss_mb() -> float | None:
    """Peak RSS of this process so far (getrusage), in MiB; None where `resource` is missing."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024  # macOS bytes, Linux KiB


class PeakRss:
    """`start()` before a section, `peak_mb()` after it: the highest RSS reached in between."""

    def __init__(self) -> None:
        self._overall = process_peak_rss_mb()  # before the first reset erases it
        self.method = "vmhwm-reset" if self._reset() else "process-peak"

    @staticmethod
    def _reset() -> bool:
        try:
            _CLEAR_REFS.write_text("5")
        except OSError:
            return False
        return _status_mb("VmHWM") is not None

    def start(self) -> None:
        self._overall = self.overall_mb()
        if self.method == "vmhwm-reset" and not self._reset():
            self.method = "process-peak"

    def peak_mb(self) -> float | None:
        if self.method == "vmhwm-reset":
            return _status_mb("VmHWM")
        return process_peak_rss_mb()

    def overall_mb(self) -> float | None:
        """The highest RSS since this object was made, or earlier (the process peak at that time)."""
        values = [v for v in (self._overall, self.peak_mb()) if v is not None]
        return max(values) if values else None
