"""exporter/trt/toolchain.py without a GPU: the glue to the real Polygraphy API.

TensorRT is a stand-in module here, but Polygraphy's Profile and CreateConfig are the real ones,
so these tests pin the argument names and shapes the build passes to Polygraphy.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import pytest

from stagevar.exporter.trt.profiles import graph_profiles
from stagevar.exporter.trt.toolchain import PlanRequest, PolygraphyToolchain, load_toolchain
from stagevar.runtime import graph_io as gio
from stagevar.runtime.errors import StagevarError
from stagevar.runtime.manifest import load_manifest

polygraphy_trt = pytest.importorskip("polygraphy.backend.trt", reason="needs polygraphy (stagevar[trt])")


def _fake_trt(version="10.9.0.34"):
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.LayerType = types.SimpleNamespace(PLUGIN_V2="plugin_v2", PLUGIN_V3="plugin_v3", MATRIX_MULTIPLY="mm")
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="workspace")
    trt.OnnxParserFlag = types.SimpleNamespace(NATIVE_INSTANCENORM="native_instancenorm",
                                               ENABLE_PLUGIN_OVERRIDE="plugin_override")
    return trt


class _Tensor:
    def __init__(self, name, shape, is_shape_tensor=False):
        self.name, self.shape, self.is_shape_tensor = name, shape, is_shape_tensor


class _Network:
    """What the parser returns, reduced to what the toolchain inspects."""

    def __init__(self, inputs, layer_types):
        self.inputs, self.layers = inputs, [types.SimpleNamespace(type=t) for t in layer_types]

    @property
    def num_inputs(self):
        return len(self.inputs)

    def get_input(self, i):
        return self.inputs[i]

    @property
    def num_layers(self):
        return len(self.layers)

    def get_layer(self, i):
        return self.layers[i]


@pytest.fixture
def polygraphy_calls(monkeypatch):
    calls = {}

    def network_from_onnx_path(path, flags=None, strongly_typed=None):
        calls["parse"] = {"path": path, "flags": flags, "strongly_typed": strongly_typed}
        return ("builder", calls["network"], "parser")

    def engine_bytes_from_network(network, config=None, save_timing_cache=None):
        calls["build"] = {"network": network, "config": config, "save_timing_cache": save_timing_cache}
        return b"serialized plan"

    monkeypatch.setattr(polygraphy_trt, "network_from_onnx_path", network_from_onnx_path)
    monkeypatch.setattr(polygraphy_trt, "engine_bytes_from_network", engine_bytes_from_network)
    return calls


def _request(tiny_artifacts, tmp_path, graph, **kw) -> PlanRequest:
    manifest = load_manifest(tiny_artifacts, verify=False)
    profiles = tuple(graph_profiles(manifest.data, graph))
    return PlanRequest(graph, manifest.graph_path(graph), tmp_path / f"{graph}.plan", profiles,
                       optimization_level=4, workspace_bytes=kw.pop("workspace_bytes", 2 << 30),
                       timing_cache=tmp_path / "timing.cache", **kw)


def _network_for(request, extra_layers=()):
    names = request.profiles[0].shape_dict()
    inputs = [_Tensor(n, tuple(-1 for _ in mmm[0])) for n, mmm in names.items()] + [_Tensor("tau", ())]
    return _Network(inputs, ["mm", *extra_layers])


def test_build_plan_passes_profiles_and_flags_to_polygraphy(tiny_artifacts, tmp_path, polygraphy_calls):
    request = _request(tiny_artifacts, tmp_path, gio.STEP)
    polygraphy_calls["network"] = _network_for(request)
    phases = []
    result = PolygraphyToolchain(_fake_trt()).build_plan(request, phases.append)
    assert phases == ["step: parse", f"step: build ({len(request.profiles)} profiles)", "step: serialize"]
    assert polygraphy_calls["parse"] == {"path": str(request.onnx_path), "flags": None, "strongly_typed": True}
    build = polygraphy_calls["build"]
    assert build["network"][1] is polygraphy_calls["network"]
    assert build["save_timing_cache"] == str(request.timing_cache)
    config = build["config"]
    assert isinstance(config, polygraphy_trt.CreateConfig)
    assert config.builder_optimization_level == 4 and config.memory_pool_limits == {"workspace": 2 << 30}
    assert config.timing_cache_path is None  # no cache yet: nothing to load
    assert config.tf32 is False and config.fp16 is False  # precision comes from the ONNX
    assert len(config.profiles) == len(request.profiles)
    for profile, spec in zip(config.profiles, request.profiles):
        assert isinstance(profile, polygraphy_trt.Profile)
        for name, (lo, opt, hi) in spec.shapes:
            assert (profile[name].min, profile[name].opt, profile[name].max) == (lo, opt, hi)
    assert request.plan_path.read_bytes() == b"serialized plan" and result.plugin_layers == 0


def test_an_existing_timing_cache_is_loaded(tiny_artifacts, tmp_path, polygraphy_calls):
    request = _request(tiny_artifacts, tmp_path, gio.VAE_DECODER, workspace_bytes=None)
    request.timing_cache.write_bytes(b"cache")
    polygraphy_calls["network"] = _network_for(request)
    PolygraphyToolchain(_fake_trt()).build_plan(request, lambda phase: None)
    config = polygraphy_calls["build"]["config"]
    assert config.timing_cache_path == str(request.timing_cache) and config.memory_pool_limits is None


def test_plugins_get_the_override_flag_and_are_counted(tiny_artifacts, tmp_path, polygraphy_calls):
    request = _request(tiny_artifacts, tmp_path, gio.FIDELITY, custom_nodes=8, plugin_override=True)
    polygraphy_calls["network"] = _network_for(request, extra_layers=["plugin_v3"] * 8)
    result = PolygraphyToolchain(_fake_trt()).build_plan(request, lambda phase: None)
    assert polygraphy_calls["parse"]["flags"] == ["native_instancenorm", "plugin_override"]
    assert result.plugin_layers == 8


def test_a_dynamic_input_without_profile_shapes_is_refused(tiny_artifacts, tmp_path, polygraphy_calls):
    request = _request(tiny_artifacts, tmp_path, gio.STEP)
    network = _network_for(request)
    network.inputs.append(_Tensor("mystery", (-1, 3)))
    polygraphy_calls["network"] = network
    with pytest.raises(StagevarError, match="mystery"):
        PolygraphyToolchain(_fake_trt()).build_plan(request, lambda phase: None)
    network.inputs[-1] = _Tensor("scale_index", (), is_shape_tensor=True)
    with pytest.raises(StagevarError, match="shape tensor"):
        PolygraphyToolchain(_fake_trt()).build_plan(request, lambda phase: None)


def test_a_polygraphy_failure_becomes_one_sentence(tiny_artifacts, tmp_path, polygraphy_calls, monkeypatch):
    request = _request(tiny_artifacts, tmp_path, gio.STEP)
    polygraphy_calls["network"] = _network_for(request)

    def fail(*args, **kwargs):
        raise RuntimeError("Invalid Engine. Please ensure the engine was built correctly\nmore")

    monkeypatch.setattr(polygraphy_trt, "engine_bytes_from_network", fail)
    with pytest.raises(StagevarError) as info:
        PolygraphyToolchain(_fake_trt()).build_plan(request, lambda phase: None)
    assert "could not build the step engine (Invalid Engine" in str(info.value) and "\n" not in str(info.value)
    assert not request.plan_path.exists()


def test_load_toolchain_refuses_missing_or_old_tensorrt(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(StagevarError, match="TensorRT is not installed"):
        load_toolchain("DIR")
    monkeypatch.setitem(sys.modules, "tensorrt", _fake_trt("8.6.1.6"))
    with pytest.raises(StagevarError, match="TensorRT 8.6.1.6 is too old"):
        load_toolchain("DIR")
    monkeypatch.setitem(sys.modules, "tensorrt", _fake_trt())
    assert load_toolchain("DIR").trt_version == "10.9.0.34"


def test_the_gpu_is_read_through_cuda_python(monkeypatch):
    ok = "success"
    cudart = types.ModuleType("cuda.bindings.runtime")
    cudart.cudaError_t = types.SimpleNamespace(cudaSuccess=ok)
    cudart.cudaDeviceAttr = types.SimpleNamespace(cudaDevAttrComputeCapabilityMajor="major",
                                                  cudaDevAttrComputeCapabilityMinor="minor")
    cudart.cudaDeviceGetAttribute = lambda attr, dev: (ok, {"major": 8, "minor": 9}[attr])
    cudart.cudaGetDeviceProperties = lambda dev: (ok, types.SimpleNamespace(name=b"NVIDIA L4\0\0junk"))
    bindings = types.ModuleType("cuda.bindings")
    bindings.runtime = cudart
    cuda = types.ModuleType("cuda")
    cuda.bindings = bindings
    for name, module in (("cuda", cuda), ("cuda.bindings", bindings), ("cuda.bindings.runtime", cudart)):
        monkeypatch.setitem(sys.modules, name, module)
    gpu = PolygraphyToolchain(_fake_trt()).gpu()
    assert gpu.compute_capability == "8.9" and gpu.name == "NVIDIA L4"


def _fake_registry():
    spec = importlib.util.spec_from_file_location(
        "stagevar_tests_fake_trt", Path(__file__).parents[1] / "runtime" / "fake_trt.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.FakePluginRegistry()


def test_plugin_libraries_go_through_the_registry(tmp_path):
    registry = _fake_registry()
    trt = _fake_trt()
    trt.get_plugin_registry = lambda: registry
    lib = tmp_path / "libstagevar_trt_plugin.so"
    lib.write_bytes(registry.PLUGIN_BYTES)
    PolygraphyToolchain(trt).load_plugins(lib)
    assert registry.loaded == [str(lib)] and registry.get_creator("StageVarTokenRestore", "1", "")
    # A library TensorRT's loader rejects and dlopen cannot open: one sentence with dlopen's reason.
    broken = tmp_path / "libbroken.so"
    broken.write_bytes(b"\x7fELF truncated")
    with pytest.raises(StagevarError, match="could not load the plugin library .*libbroken.so"):
        PolygraphyToolchain(_with_registry(_fake_trt(), _fake_registry())).load_plugins(broken)


def _with_registry(trt, registry):
    trt.get_plugin_registry = lambda: registry
    return trt


def test_a_second_build_in_one_process_reuses_the_registered_plugin(tmp_path):
    """Defect 3. Guards against treating load_library's None for an already registered creator
    as a failure: a notebook or API user building twice in one process got a StagevarError."""
    registry = _fake_registry()
    lib = tmp_path / "libstagevar_trt_plugin.so"
    lib.write_bytes(registry.PLUGIN_BYTES)
    PolygraphyToolchain(_with_registry(_fake_trt(), registry)).load_plugins(lib)
    copy = tmp_path / "engines" / lib.name  # the runtime loads the copy beside the engines
    copy.parent.mkdir()
    copy.write_bytes(lib.read_bytes())
    PolygraphyToolchain(_with_registry(_fake_trt(), registry)).load_plugins(lib)
    PolygraphyToolchain(_with_registry(_fake_trt(), registry)).load_plugins(copy)
    assert registry.get_creator("StageVarTokenRestore", "1", "") is not None
