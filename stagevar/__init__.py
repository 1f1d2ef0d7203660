"""stagevar: per-scale ONNX/TensorRT export of visual autoregressive models with StageVAR built in.

`stagevar.runtime` (numpy + onnxruntime) is what apps embed; `stagevar.exporter` (torch) builds artifacts.
"""

__version__ = "0.1.0"
