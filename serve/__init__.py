"""Serving an export on existing engines: Triton (repository writer + model.py) and Ray Serve.

Imports only the runtime, numpy and pillow; tritonclient, pytriton and ray are imported inside the
functions that need them. See docs/serving.md.
"""
