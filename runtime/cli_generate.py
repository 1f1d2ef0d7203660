"""`stagevar-generate`: generate images from exported artifacts (runtime issue, not landed yet)."""

from __future__ import annotations

import sys

from .cli_common import not_yet, run_cli


def main(argv: list[str] | None = None) -> int:
    return run_cli(not_yet("stagevar-generate", "the ONNX Runtime pipeline is the runtime issue"), argv)


if __name__ == "__main__":
    sys.exit(main())
