"""TensorRT engines as the `trt` backend sees them: the import check, one deserialized engine's
I/O tensors and profiles, the execution context of one profile, and plugin libraries.

TensorRT and cuda-python are imported by `import_tensorrt`, never at module import.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np

from .cuda_memory import load_cudart
from .errors import StagevarError
from .manifest import Manifest, sha256_file

_LOADED_PLUGINS: dict[str, object] = {}  # resolved path -> TensorRT library handle (per process)
# (name, version, namespace) of the creators libstagevar_trt_plugin.so registers.
PLUGIN_CREATORS = (("StageVarTokenRestore", "1", ""),)


def import_tensorrt():
    """(tensorrt, cudart) or StagevarError saying what is missing."""
    reason = None
    try:
        import tensorrt as trt

        version = str(getattr(trt, "__version__", "0"))
        if not version.split(".")[0].isdigit() or int(version.split(".")[0]) < 10:
            reason = f"found TensorRT {version}"
    except Exception as exc:  # not installed, or the PyPI placeholder package, or missing libraries
        trt, reason = None, ("tensorrt is not installed" if isinstance(exc, ModuleNotFoundError)
                             else f"tensorrt failed to import: {type(exc).__name__}")
    if reason is None:
        try:
            cudart = load_cudart()
        except Exception:
            reason = "cuda-python is not installed"
    if reason is not None:
        raise StagevarError(f"Backend 'trt' needs TensorRT 10+ and cuda-python on a machine with an NVIDIA GPU "
                            f"({reason}); install stagevar[trt] on such a machine, or use backend='ort'.")
    return trt, cudart


class ProfileContext:
    """An execution context bound to one profile, with the shapes and addresses last set on it."""

    def __init__(self, ctx, key: tuple[str, int]):
        self.ctx, self.key = ctx, key
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.addresses: dict[str, int] = {}


class EngineInfo:
    """One graph's engine: its I/O tensors, their dtypes, its profiles and contexts."""

    def __init__(self, trt, name: str, engine):
        self.trt, self.name, self.engine = trt, name, engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        mode = engine.get_tensor_mode
        self.inputs = [n for n in names if mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if mode(n) == trt.TensorIOMode.OUTPUT]
        # Shape-inference inputs (shape tensors) live in host memory; none are expected.
        self.host_inputs = {n for n in self.inputs if engine.is_shape_inference_io(n)}
        self.trt_dtypes = {n: engine.get_tensor_dtype(n) for n in names}
        shapes = {n: tuple(int(d) for d in engine.get_tensor_shape(n)) for n in self.inputs}
        # Inputs without dynamic axes (scalars, fixed tables) take no set_input_shape.
        self.static = {n: s for n, s in shapes.items() if min((*s, 0)) >= 0}
        self.profiles = [self._profile(i) for i in range(engine.num_optimization_profiles)]
        self.contexts: dict[int, ProfileContext] = {}

    def _profile(self, index: int) -> dict:
        """{input: (min, opt, max)} of the dynamic inputs. Static inputs take their shape from the
        engine: `get_tensor_profile_shape` may return an invalid Dims for them."""
        profile = {}
        for name in self.inputs:
            if name in self.static:
                continue
            try:
                lo, opt, hi = (tuple(int(d) for d in dims) for dims in
                               self.engine.get_tensor_profile_shape(name, index))
            except Exception:  # an input the profile does not describe: static, or a shape tensor
                lo = opt = hi = tuple(int(d) for d in self.engine.get_tensor_shape(name))
            if len(lo) == len(opt) == len(hi) and min((*lo, 0)) >= 0:
                profile[name] = (lo, opt, hi)
        return profile

    def dtype(self, name: str, kind: str) -> np.dtype:
        if name not in (self.inputs if kind == "input" else self.outputs):
            raise StagevarError(f"The '{self.name}' engine has no '{name}' {kind}; build the engines again "
                                f"with this stagevar version.")
        try:
            return np.dtype(self.trt.nptype(self.trt_dtypes[name]))
        except TypeError:
            raise StagevarError(f"The '{self.name}' engine declares {name} as {self.trt_dtypes[name]}, which has "
                                f"no numpy type; export with fp32 or fp16 inputs and outputs.") from None


def context_memory_size(engine) -> int:
    """Device memory an execution context of `engine` needs (any profile). TensorRT 11's bindings
    drop `device_memory_size`, and `device_memory_size_v2` may legitimately be 0: test for the
    attributes instead of falling back on a falsy value."""
    if hasattr(engine, "device_memory_size_v2"):
        return int(engine.device_memory_size_v2)
    if hasattr(engine, "get_device_memory_size_for_profile_v2"):
        return max(int(engine.get_device_memory_size_for_profile_v2(i))
                   for i in range(engine.num_optimization_profiles))
    return int(engine.device_memory_size)


def load_plugins(trt, manifest: Manifest, build: dict, plugins: str | None) -> None:
    """Register the plugin library the engines were built with, after checking its sha256."""
    entry = build.get("plugins")
    if not entry:
        return
    if plugins:
        path = Path(plugins)  # the user's own choice, from the command line or the API
    else:
        folder, name = build.get("dir", ""), entry.get("file") if isinstance(entry, dict) else None
        rel = name if folder == "" else f"{folder}/{name}" if isinstance(folder, str) and isinstance(name, str) else None
        path = manifest.file_path(rel, "the TensorRT plugin library")
    if not path.is_file():
        raise StagevarError(f"The TensorRT engines need the plugin library {entry['file']}, which is not at {path}; "
                            f"pass its path with plugins= (--plugins), or build the engines again.")
    if sha256_file(path) != entry.get("sha256"):
        raise StagevarError(f"Plugin library {path} is not the one the TensorRT engines were built with (its sha256 "
                            f"differs); pass that library, or build the engines again.")
    handle = register_plugin_library(trt, path.resolve())  # asks the registry first: no double load
    if handle is not None:
        _LOADED_PLUGINS[str(path.resolve())] = handle  # loaded libraries stay referenced


def creators_registered(registry) -> bool:
    """Whether every stagevar plugin creator is in TensorRT's registry already."""
    get = getattr(registry, "get_creator", None)
    if get is None:
        return False
    try:
        return all(get(name, version, namespace) is not None for name, version, namespace in PLUGIN_CREATORS)
    except Exception:  # bindings without the three-argument form
        return False


def register_plugin_library(trt, path: Path):
    """Register the creators of libstagevar_trt_plugin.so with TensorRT; the library handle, or
    None when they were registered already (a second build or backend in one process).

    TensorRT's `load_library` returns None both for a library whose creators are registered
    already and for one that cannot be loaded, so the registry is asked first and after. A
    library that does not load is refused in one sentence naming the reason dlopen gives (a
    dependency such as libcudart or a build-tree library that is not found).
    """
    registry = trt.get_plugin_registry()
    if creators_registered(registry):
        return None
    reason = None
    try:
        handle = registry.load_library(str(path))
    except Exception as exc:  # older bindings raise instead of returning None
        handle, reason = None, _first_line(exc)
    if handle is not None:
        return handle
    # dlopen it ourselves: its error names the missing dependency, and a library that does load
    # registers its creators through its explicit entry point.
    try:
        lib = ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
    except OSError as exc:
        lib, reason = None, _first_line(exc)
    else:
        register = getattr(lib, "stagevar_register_trt_plugin", None)
        if register is not None:
            register()
    if lib is not None and (creators_registered(registry) or not hasattr(registry, "get_creator")):
        return lib
    raise StagevarError(f"TensorRT could not load the plugin library {path} "
                        f"({reason or 'it registered no StageVarTokenRestore creator'}); rebuild "
                        f"libstagevar_trt_plugin.so for this TensorRT (one self-contained file: "
                        f"`readelf -d` shows no build-tree RUNPATH) and build the engines again.")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__
