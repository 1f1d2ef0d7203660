"""Per-section peak RSS (runtime/memory_stats.py): each plan's own peak, and the whole run's."""

import numpy as np
import pytest

from stagevar.runtime.memory_stats import PeakRss, current_rss_mb

MB = 1024 * 1024


def _touch(mb: int) -> None:
    block = np.ones(mb * MB // 8)  # written, so resident
    del block


def test_each_section_reports_its_own_peak_and_the_run_keeps_the_maximum():
    """Guards: the process-wide peak copied into every plan (a small plan after a big one would
    report the big one's memory), and the whole-run figure lost to the per-plan reset."""
    peak = PeakRss()
    if peak.method != "vmhwm-reset":
        pytest.skip("this kernel cannot reset the peak RSS (/proc/self/clear_refs)")
    peak.start()
    _touch(300)
    big = peak.peak_mb()
    peak.start()
    _touch(20)
    small = peak.peak_mb()
    assert big - current_rss_mb() > 250  # the 300 MB block was counted, then freed
    assert small < big - 250
    assert peak.overall_mb() >= big
