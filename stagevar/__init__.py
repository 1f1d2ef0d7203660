"""stagevar: per-scale ONNX/TensorRT export of visual autoregressive models with StageVAR built in.

Embed it like a diffusers pipeline::

    from stagevar import Pipeline
    pipe = Pipeline.from_dir("stagevar-artifacts/infinity-tiny")
    image = pipe("a red apple on a table", seed=0).images[0]

`stagevar.runtime` (numpy + onnxruntime) is what apps embed; `stagevar.exporter` (torch) builds
artifacts. The top-level names load lazily: `import stagevar` imports neither onnxruntime nor torch.
"""

__version__ = "0.1.0"

# name -> (module, attribute): resolved on first access (PEP 562), so the import stays light.
_LAZY = {
    "Pipeline": ("stagevar.runtime.pipeline", "Pipeline"),
    "PipelineOutput": ("stagevar.runtime.pipeline", "PipelineOutput"),
    "StagevarError": ("stagevar.runtime.errors", "StagevarError"),
}

__all__ = ["Pipeline", "PipelineOutput", "StagevarError", "__version__"]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'stagevar' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_LAZY))
