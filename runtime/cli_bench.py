"""`stagevar-bench`: engine latency benchmark (runtime issue, not landed yet)."""

from __future__ import annotations

import sys

from .cli_common import not_yet, run_cli


def main(argv: list[str] | None = None) -> int:
    return run_cli(not_yet("stagevar-bench", "the benchmark is part of the runtime issue"), argv)


if __name__ == "__main__":
    sys.exit(main())
