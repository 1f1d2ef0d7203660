"""Everything that touches TensorRT, through Polygraphy: version, GPU, plugins, build, run.

`load_toolchain()` imports tensorrt and polygraphy (only here, only when called), so the rest of
stagevar works without them; without TensorRT it raises the one sentence users see. Tests swap
`Toolchain` for a fake that writes dummy plans, so the orchestration in build.py is tested on
machines without a GPU.

Polygraphy calls used (signatures read from polygraphy 0.49-0.53 backend/trt):
  network_from_onnx_path(path, flags=None, strongly_typed=None) -> (builder, network, parser)
  Profile().add(name, min, opt, max)
  CreateConfig(profiles=, builder_optimization_level=, memory_pool_limits=, load_timing_cache=)
  engine_bytes_from_network((builder, network, parser), config=, save_timing_cache=) -> IHostMemory
  engine_from_path(path), TrtRunner(engine).activate() / set_profile(i) / infer(feeds)
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import numpy as np

from stagevar.runtime.errors import StagevarError
from stagevar.runtime.trt_engine import register_plugin_library

from .profiles import ProfileSpec

MIN_TRT_MAJOR = 10  # strongly typed networks (precision from the ONNX) need TensorRT 10+
_CC_MAJOR, _CC_MINOR = 75, 76  # cudaDevAttrComputeCapabilityMajor / Minor


def not_installed(root: Path | str, reason: str | None = None) -> StagevarError:
    """The sentence for a machine without TensorRT (or Polygraphy)."""
    what = "TensorRT is not installed" if reason is None else f"TensorRT cannot be loaded ({reason})"
    return StagevarError(f"{what}: install stagevar[trt] on a machine with an NVIDIA GPU and "
                         f"TensorRT {MIN_TRT_MAJOR}+, then run `stagevar-export build {root}`.")


@dataclass(frozen=True)
class GpuInfo:
    compute_capability: str  # "9.0"
    name: str


@dataclass(frozen=True)
class PlanRequest:
    """One engine to build: a graph, its profiles and where the plan and timing cache go."""

    graph: str
    onnx_path: Path
    plan_path: Path
    profiles: tuple[ProfileSpec, ...]
    optimization_level: int
    workspace_bytes: int | None
    timing_cache: Path  # loaded if present, then updated in place
    # Plugins: how many custom-domain nodes the ONNX has, and whether the parser must be told
    # to prefer a registered plugin over the node's ONNX local function.
    custom_nodes: int = 0
    plugin_override: bool = False


@dataclass(frozen=True)
class PlanResult:
    plugin_layers: int
    seconds: float


class EngineRunner(Protocol):
    def infer(self, profile_index: int, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def close(self) -> None: ...


class Toolchain(Protocol):
    trt_version: str

    def gpu(self) -> GpuInfo: ...

    def load_plugins(self, path: Path) -> None: ...

    def build_plan(self, request: PlanRequest, phase: Callable[[str], None]) -> PlanResult: ...

    def open_engine(self, plan_path: Path) -> EngineRunner: ...


def load_toolchain(root: Path | str) -> "PolygraphyToolchain":
    """The real toolchain, or StagevarError with the install sentence."""
    try:
        import tensorrt as trt
    except ImportError:
        raise not_installed(root) from None
    except Exception as exc:  # e.g. the PyPI stub whose import fails without NVIDIA's index
        raise not_installed(root, _first_line(exc)) from None
    try:
        import polygraphy.backend.trt  # noqa: F401
    except ImportError:
        raise not_installed(root, "polygraphy is missing") from None
    version = str(getattr(trt, "__version__", "0"))
    if int(version.split(".")[0] or 0) < MIN_TRT_MAJOR:
        raise StagevarError(f"TensorRT {version} is too old: stagevar builds strongly typed engines, "
                            f"which need TensorRT {MIN_TRT_MAJOR}+; upgrade it and run "
                            f"`stagevar-export build {root}` again.")
    return PolygraphyToolchain(trt)


class PolygraphyToolchain:
    def __init__(self, trt) -> None:
        self.trt = trt
        self.trt_version = str(trt.__version__)
        self._libraries: list = []  # loaded plugin libraries stay referenced (never unloaded)

    # ---- machine ----------------------------------------------------------------------------

    def gpu(self, device: int = 0) -> GpuInfo:
        """Compute capability and name of CUDA device `device` (after CUDA_VISIBLE_DEVICES)."""
        errors = []
        for query in (_gpu_from_cuda_python, _gpu_from_cudart):
            try:
                return query(device)
            except Exception as exc:  # each backend fails in its own way; try the next one
                errors.append(_first_line(exc))
        raise StagevarError(f"No NVIDIA GPU is visible to CUDA ({'; '.join(errors)}); build TensorRT "
                            f"engines on the machine (GPU model) that will run them.")

    def load_plugins(self, path: Path) -> None:
        """Register the plugin creators of a library before parsing, so the ONNX parser maps the
        custom nodes to them (runtime.trt_engine.register_plugin_library: a library registered
        already in this process is not loaded twice; one that does not load is refused)."""
        handle = register_plugin_library(self.trt, Path(path))
        if handle is not None:
            self._libraries.append(handle)

    # ---- build ------------------------------------------------------------------------------

    def build_plan(self, request: PlanRequest, phase: Callable[[str], None]) -> PlanResult:
        import time

        from polygraphy.backend.trt import CreateConfig, Profile, engine_bytes_from_network, network_from_onnx_path
        from polygraphy.logger import G_LOGGER

        trt, graph = self.trt, request.graph
        t0 = time.perf_counter()
        try:
            with G_LOGGER.verbosity(G_LOGGER.WARNING):  # Polygraphy's INFO dumps whole configs
                phase(f"{graph}: parse")
                # strongly_typed: tensor types come from the ONNX (fp16 GEMMs, fp32 norms), not
                # from builder precision flags; TensorRT 11 accepts nothing else.
                network = network_from_onnx_path(str(request.onnx_path), flags=self._parser_flags(request),
                                                 strongly_typed=True)
                plugin_layers = self._check_network(request, network[1])
                profiles = []
                for spec in request.profiles:
                    profile = Profile()
                    for name, (lo, opt, hi) in spec.shapes:
                        profile.add(name, min=lo, opt=opt, max=hi)
                    profiles.append(profile)
                pools = None
                if request.workspace_bytes:
                    pools = {trt.MemoryPoolType.WORKSPACE: int(request.workspace_bytes)}
                cache = request.timing_cache
                # tf32 stays off (Polygraphy's default): an fp32 export means fp32 GEMMs.
                config = CreateConfig(profiles=profiles, builder_optimization_level=request.optimization_level,
                                      memory_pool_limits=pools,
                                      load_timing_cache=str(cache) if cache.is_file() else None)
                phase(f"{graph}: build ({len(profiles)} profile{'s' if len(profiles) != 1 else ''})")
                plan = engine_bytes_from_network(network, config=config, save_timing_cache=str(cache))
                phase(f"{graph}: serialize")
                with open(request.plan_path, "wb") as f:
                    f.write(memoryview(plan))
                    f.flush()
                    os.fsync(f.fileno())
        except StagevarError:
            raise
        except Exception as exc:  # Polygraphy raises PolygraphyException; TensorRT logged the cause
            raise StagevarError(f"TensorRT could not build the {graph} engine ({_first_line(exc)}, "
                                f"see the TensorRT messages above); the export's engines and "
                                f"manifest are unchanged.") from None
        return PlanResult(plugin_layers, time.perf_counter() - t0)

    def _parser_flags(self, request: PlanRequest):
        if not request.plugin_override:
            return None
        flags = self.trt.OnnxParserFlag
        if not hasattr(flags, "ENABLE_PLUGIN_OVERRIDE"):
            return None  # older parsers already prefer a registered plugin over a local function
        # Polygraphy replaces the parser's flags with this list: keep the default
        # NATIVE_INSTANCENORM on.
        return [flags.NATIVE_INSTANCENORM, flags.ENABLE_PLUGIN_OVERRIDE]

    def _check_network(self, request: PlanRequest, network) -> int:
        trt = self.trt
        for i in range(network.num_inputs):
            tensor = network.get_input(i)
            if tensor.is_shape_tensor:
                # A profile would have to list its values; no stagevar graph has one by design.
                raise StagevarError(f"Input {tensor.name} of the {request.graph} graph is a shape "
                                    f"tensor for TensorRT, which stagevar's profiles do not cover; "
                                    f"export again with this stagevar.")
            dynamic = any(d < 0 for d in tensor.shape)
            if dynamic and not all(tensor.name in dict(p.shapes) for p in request.profiles):
                raise StagevarError(f"Input {tensor.name} of the {request.graph} graph has dynamic "
                                    f"axes but no profile shape; export again with this stagevar.")
        kinds = {getattr(trt.LayerType, n) for n in ("PLUGIN", "PLUGIN_V2", "PLUGIN_V3")
                 if hasattr(trt.LayerType, n)}
        return sum(1 for i in range(network.num_layers) if network.get_layer(i).type in kinds)

    # ---- run --------------------------------------------------------------------------------

    def open_engine(self, plan_path: Path) -> "PolygraphyEngineRunner":
        return PolygraphyEngineRunner(plan_path)


class PolygraphyEngineRunner:
    """A deserialized plan with one execution context; `infer` selects the profile first."""

    def __init__(self, plan_path: Path) -> None:
        from polygraphy.backend.trt import TrtRunner, engine_from_path

        self.runner = TrtRunner(engine_from_path(str(plan_path)))
        self.runner.activate()

    def infer(self, profile_index: int, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.runner.set_profile(profile_index)
        outputs = self.runner.infer(feeds, check_inputs=False)
        # The runner reuses its host buffers between calls: copy.
        return {name: np.array(value, copy=True) for name, value in outputs.items()}

    def close(self) -> None:
        self.runner.deactivate()


# --------------------------------------------------------------------------------------------
# GPU queries


def _gpu_from_cuda_python(device: int) -> GpuInfo:
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        from cuda import cudart
    ok = cudart.cudaError_t.cudaSuccess
    err, major = cudart.cudaDeviceGetAttribute(cudart.cudaDeviceAttr.cudaDevAttrComputeCapabilityMajor, device)
    err2, minor = cudart.cudaDeviceGetAttribute(cudart.cudaDeviceAttr.cudaDevAttrComputeCapabilityMinor, device)
    err3, props = cudart.cudaGetDeviceProperties(device)
    if err != ok or err2 != ok or err3 != ok:
        raise RuntimeError(f"cuda-python: {err}, {err2}, {err3}")
    name = props.name
    name = name.split(b"\0")[0].decode("utf-8", "replace") if isinstance(name, bytes) else str(name)
    return GpuInfo(f"{major}.{minor}", name.strip())


def _gpu_from_cudart(device: int) -> GpuInfo:
    """libcudart through ctypes (the library Polygraphy finds), for machines without cuda-python."""
    from polygraphy import cuda

    lib = cuda.wrapper().handle
    major, minor = ctypes.c_int(), ctypes.c_int()
    for attr, out in ((_CC_MAJOR, major), (_CC_MINOR, minor)):
        status = lib.cudaDeviceGetAttribute(ctypes.byref(out), ctypes.c_int(attr), ctypes.c_int(device))
        if status != 0:
            raise RuntimeError(f"cudaDeviceGetAttribute returned CUDA error {status}")
    # cudaDeviceProp starts with char name[256] in every CUDA version; the buffer is larger than
    # any version's struct. CUDA 12 exports the current layout as cudaGetDeviceProperties_v2.
    props = ctypes.create_string_buffer(8192)
    getter = getattr(lib, "cudaGetDeviceProperties_v2", None) or lib.cudaGetDeviceProperties
    name = props.raw[:256].split(b"\0")[0].decode("utf-8", "replace") if getter(props, ctypes.c_int(device)) == 0 else ""
    return GpuInfo(f"{major.value}.{minor.value}", name.strip() or "unknown NVIDIA GPU")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0][:300] if text else type(exc).__name__)
