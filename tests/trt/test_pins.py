"""The TensorRT extras pin cuda-python by the CUDA major of the TensorRT wheel (issue 15, defect 7).

Guards against `cuda-python>=12` (resolves to 13.x, which needs a CUDA 13 driver, next to a CUDA
12 TensorRT) and an unpinned `tensorrt` metapackage (resolves to the newest major and CUDA).
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def _requirements(extra: str) -> dict[str, str]:
    extras = tomllib.loads(PYPROJECT.read_text())["project"]["optional-dependencies"]
    return {re.match(r"[A-Za-z0-9_.-]+", r).group(0): r for r in extras[extra]}


def _major_bounds(spec: str) -> tuple[int, int]:
    low = int(re.search(r">=\s*(\d+)", spec).group(1))
    high = int(re.search(r"<\s*(\d+)", spec).group(1))
    return low, high


def test_every_trt_extra_pins_cuda_python_to_the_wheels_cuda_major():
    for extra in ("trt", "trt-cu12", "trt-cu13"):
        reqs = _requirements(extra)
        assert "tensorrt" not in reqs, f"{extra}: the tensorrt metapackage picks its own CUDA major"
        (wheel,) = [name for name in reqs if re.fullmatch(r"tensorrt-cu\d+", name)]
        cuda = int(wheel.removeprefix("tensorrt-cu"))
        assert _major_bounds(reqs["cuda-python"]) == (cuda, cuda + 1), (extra, reqs["cuda-python"])
        low, high = _major_bounds(reqs[wheel])
        assert low >= 10 and high <= 12, (extra, reqs[wheel])  # majors the runtime was written for
