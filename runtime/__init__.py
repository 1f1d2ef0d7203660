"""stagevar.runtime: numpy-only definitions shared with the exporter, and the deployment runtime."""
