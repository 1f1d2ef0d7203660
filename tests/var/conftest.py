"""The VAR tests share var_tiny_bundle and var_tiny_artifacts with the serving and TensorRT tests:
they live in tests/conftest.py."""
