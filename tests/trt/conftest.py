"""Fixtures of the TensorRT build tests: a writable copy of the tiny export and a fake toolchain.

The fake stands in for exporter/trt/toolchain.PolygraphyToolchain on machines without TensorRT:
it "builds" a plan by writing bytes, so the orchestration (cache keys, staged folder swap,
manifest records, reuse, --force, failure safety) runs for real.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from stagevar.exporter.trt.toolchain import GpuInfo, PlanResult
from stagevar.runtime.errors import StagevarError


class FakeToolchain:
    def __init__(self, trt_version: str = "10.14.1.48", cc: str = "9.0", fail_on: str | None = None,
                 interrupt_on: str | None = None, plugin_layers: int | None = None):
        self.trt_version = trt_version
        self.cc = cc
        self.fail_on = fail_on
        self.interrupt_on = interrupt_on
        self.plugin_layers = plugin_layers
        self.built: list[str] = []
        self.requests = []
        self.parsed = {}
        self.plugins: list[Path] = []
        self.phases: list[str] = []

    def gpu(self) -> GpuInfo:
        return GpuInfo(self.cc, "Fake GPU")

    def load_plugins(self, path: Path) -> None:
        self.plugins.append(Path(path))

    def build_plan(self, request, phase) -> PlanResult:
        for step in ("parse", "build", "serialize"):
            phase(f"{request.graph}: {step}")
            self.phases.append(f"{request.graph}: {step}")
        if request.graph == self.fail_on:
            raise StagevarError(f"TensorRT could not build the {request.graph} engine (fake failure).")
        if request.graph == self.interrupt_on:
            raise KeyboardInterrupt
        # Distinct bytes per build, so a rebuild is visible in the digests.
        request.plan_path.write_bytes(b"fake plan " + request.graph.encode() + b" " + os.urandom(8))
        cache = request.timing_cache
        cache.write_bytes((cache.read_bytes() if cache.is_file() else b"cache") + b"+" + request.graph.encode())
        (cache.parent / (cache.name + ".lock")).write_bytes(b"")  # as Polygraphy's LockFile leaves
        self.built.append(request.graph)
        self.requests.append(request)
        # What TensorRT would parse (the --plugins variant is deleted after the build).
        import onnx

        model = onnx.load(str(request.onnx_path), load_external_data=False)
        self.parsed[request.graph] = {
            "path": request.onnx_path, "functions": [f.name for f in model.functions],
            "stagevar_ops": [n.op_type for n in model.graph.node if n.domain == "stagevar"],
        }
        layers = request.custom_nodes if self.plugin_layers is None else self.plugin_layers
        return PlanResult(plugin_layers=layers if self.plugins else 0, seconds=0.01)

    def open_engine(self, plan_path: Path):
        raise NotImplementedError("the fake toolchain runs nothing")


@pytest.fixture
def fake_toolchain():
    return FakeToolchain


@pytest.fixture
def export_copy(tiny_artifacts, tmp_path) -> Path:
    """A private copy of the tiny export (tiny_artifacts itself is read-only)."""
    return Path(shutil.copytree(tiny_artifacts, tmp_path / "export"))
