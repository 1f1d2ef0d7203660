"""Phase progress of stagevar-export / build: an interrupted or failed phase is never printed as done."""

import io

import pytest

from stagevar.exporter.progress import PhaseProgress


class _Tty(io.StringIO):
    def isatty(self):
        return True


@pytest.mark.parametrize("stream_type", [io.StringIO, _Tty])
@pytest.mark.parametrize("exc,word", [(KeyboardInterrupt, "interrupted"), (RuntimeError, "failed")])
def test_a_phase_ended_by_an_exception_is_not_printed_as_done(stream_type, exc, word):
    # Guards against `finally: progress.close()` reporting the phase Ctrl-C stopped as "done".
    stream = stream_type()
    progress = PhaseProgress(3, stream=stream)
    with pytest.raises(exc):
        try:
            progress.phase("step")
            raise exc()
        finally:
            progress.close()
    last = stream.getvalue().strip().splitlines()[-1]
    assert word in last and "done" not in last
    assert "step" not in progress.durations


@pytest.mark.parametrize("stream_type", [io.StringIO, _Tty])
def test_a_finished_phase_is_done(stream_type):
    stream = stream_type()
    progress = PhaseProgress(2, stream=stream)
    progress.phase("load model")
    progress.close()
    text = stream.getvalue()
    assert "failed" not in text and "interrupted" not in text and "load model" in progress.durations
    if stream_type is io.StringIO:
        assert "done in" in text
