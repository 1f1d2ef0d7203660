"""stagevar.exporter: torch models, checkpoint loading, the eager reference sampler, ONNX export."""
