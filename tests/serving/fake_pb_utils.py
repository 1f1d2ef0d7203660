"""A small stand-in for `triton_python_backend_utils`, the module Triton's Python stub injects.

Enough of its surface to run a generated model.py's initialize/execute/finalize in-process:
Tensor, InferenceRequest, InferenceResponse (outputs or error), TritonError with its codes,
TritonModelException and the get-tensor helpers. The PyPI mock lacks the error parts, which are
exactly what per-request error handling needs.
"""

from __future__ import annotations

import numpy as np


class TritonModelException(Exception):
    pass


class TritonError:
    UNKNOWN, INTERNAL, NOT_FOUND, INVALID_ARG, UNAVAILABLE, UNSUPPORTED, ALREADY_EXISTS, CANCELLED = range(8)

    def __init__(self, message: str, code: int = 1):
        self._message, self._code = message, code

    def message(self) -> str:
        return self._message

    def code(self) -> int:
        return self._code


class Tensor:
    def __init__(self, name: str, array: np.ndarray):
        if not isinstance(array, np.ndarray):
            raise TypeError(f"Tensor {name} needs a numpy array, got {type(array).__name__}")
        self._name, self._array = name, array

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        return self._array


class InferenceRequest:
    def __init__(self, inputs: list[Tensor], requested_output_names=(), model_name: str = ""):
        self._inputs = list(inputs)
        self.model_name = model_name

    def inputs(self) -> list[Tensor]:
        return self._inputs


class InferenceResponse:
    def __init__(self, output_tensors=(), error: TritonError | None = None):
        if error is not None and not isinstance(error, TritonError):
            raise TypeError("error must be a TritonError")
        for t in output_tensors:
            if not isinstance(t, Tensor):
                raise TypeError("output_tensors must be Tensors")
        self._outputs, self._error = list(output_tensors), error

    def has_error(self) -> bool:
        return self._error is not None

    def error(self) -> TritonError | None:
        return self._error

    def output_tensors(self) -> list[Tensor]:
        return self._outputs


def get_input_tensor_by_name(request: InferenceRequest, name: str) -> Tensor | None:
    return next((t for t in request.inputs() if t.name() == name), None)


def get_output_tensor_by_name(response: InferenceResponse, name: str) -> Tensor | None:
    return next((t for t in response.output_tensors() if t.name() == name), None)
