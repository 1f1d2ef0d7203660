"""`stagevar-export`: ONNX/TensorRT export (exporter issue, not landed yet)."""

from __future__ import annotations

import sys

from stagevar.runtime.cli_common import not_yet, run_cli


def main(argv: list[str] | None = None) -> int:
    return run_cli(not_yet("stagevar-export", "ONNX export is the exporter issue"), argv)


if __name__ == "__main__":
    sys.exit(main())
