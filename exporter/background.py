"""Run one export job in a forked child process while the parent exports the others.

Tracing with torch.export is single-threaded Python; on a 2-core machine a second process
halves the wall time of the transformer export. The child inherits the model by fork (no
pickling, copy-on-write memory) and reports failure as a message through a pipe.

OFF by default: a forked child deadlocked once on a lock held by another thread of the parent
at fork time (a futex wait inside a CI test run). Until the export runs in a spawned worker,
the job runs inline unless STAGEVAR_FORK_EXPORT=1 is set.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import traceback
from collections.abc import Callable


class BackgroundJob:
    def __init__(self, fn: Callable[[], None]) -> None:
        self._fn = fn
        self._inline = (
            os.environ.get("STAGEVAR_FORK_EXPORT") != "1"
            or "fork" not in mp.get_all_start_methods()
            or (os.cpu_count() or 1) < 2
        )
        self._proc = None
        self._conn = None

    def start(self) -> "BackgroundJob":
        if self._inline:
            return self
        ctx = mp.get_context("fork")
        parent, child = ctx.Pipe(duplex=False)
        self._conn = parent
        self._proc = ctx.Process(target=_child, args=(self._fn, child), daemon=True)
        self._proc.start()
        child.close()
        return self

    def join(self) -> None:
        """Wait for the job; re-raise its failure in the parent."""
        if self._inline:
            self._fn()
            return
        message = self._conn.recv() if self._conn.poll(None) else None
        self._proc.join()
        if message is not None or self._proc.exitcode != 0:
            raise RuntimeError(f"background export failed (exit {self._proc.exitcode}): {message or 'no message'}")

    def kill(self) -> None:
        if self._proc is not None and self._proc.is_alive():
            self._proc.kill()
            self._proc.join()


def _child(fn, conn) -> None:
    try:
        import torch

        torch.set_num_threads(1)
        fn()
        conn.send(None)
    except BaseException:  # report everything; the parent decides
        conn.send(traceback.format_exc(limit=8))
    finally:
        conn.close()
