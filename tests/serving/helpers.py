"""Helpers of the serving tests (fixtures are in conftest.py)."""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import json
import os
import re
import signal
import threading
from pathlib import Path

import numpy as np
import pytest

# The tests ask for the smallest resolution preset (64x64 images from infinity-tiny): a request
# costs ~0.2 s on 2 cores instead of ~1.3 s at the export's 1M, same code paths.
RESOLUTION = "0.06M"


def load_model_py(model_dir: Path):
    """Import a generated `<model>/1/model.py` under a unique name (the fake utils installed)."""
    return import_file(f"stagevar_triton_model_{abs(hash(str(model_dir)))}", model_dir / "1" / "model.py")


def initialize_args(model_dir: Path) -> dict:
    """The `args` Triton's stub passes to initialize, with `model_config` as Triton's JSON."""
    config = parse_config(model_dir / "config.pbtxt")
    return {"model_config": json.dumps(config), "model_instance_kind": "CPU", "model_instance_device_id": "0",
            "model_repository": str(model_dir), "model_version": "1", "model_name": model_dir.name}


def parse_config(path: Path) -> dict:
    """config.pbtxt as the JSON dict Triton hands the model: through Triton's own protobuf schema
    when tritonclient is installed, else through a reader of the subset stagevar writes."""
    text = path.read_text()
    try:
        from google.protobuf import json_format, text_format
        from tritonclient.grpc import model_config_pb2
    except ImportError:
        params = re.findall(r'\{ key: "([^"]+)" value: \{ string_value: "((?:[^"\\]|\\.)*)" \} \}', text)
        return {"name": re.search(r'name: "([^"]+)"', text).group(1),
                "parameters": {k: {"string_value": v.encode().decode("unicode_escape")} for k, v in params}}
    message = text_format.Parse(text, model_config_pb2.ModelConfig())
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def request_inputs(prompts, seeds, **optional):
    """Triton-shaped inputs (rows, 1): PROMPT bytes, SEED int64, PLAN/ASPECT bytes, CFG/TAU fp32."""
    def column(values, dtype):
        if dtype is object:
            return np.array([[v.encode() if isinstance(v, str) else v] for v in values], dtype=object)
        return np.array([[v] for v in values], dtype=dtype)

    inputs = {"PROMPT": column(prompts, object), "SEED": column(seeds, np.int64)}
    for name, values in optional.items():
        inputs[name] = column(values, object if name in ("PLAN", "ASPECT") else np.float32)
    return inputs


def import_file(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def png_to_array(data: bytes) -> np.ndarray:
    from io import BytesIO

    from PIL import Image

    return np.asarray(Image.open(BytesIO(data)).convert("RGB"))


@contextlib.contextmanager
def sigterm_raises_interrupt():
    """CI's `timeout` sends SIGTERM: turn it into KeyboardInterrupt, so that the `finally` blocks
    that stop servers still run and leave no process or shared memory behind."""
    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def glibc_version() -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in os.confstr("CS_GNU_LIBC_VERSION").split()[1].split("."))
    except (ValueError, IndexError, OSError, AttributeError):
        return (0,)


def required_engines() -> set[str]:
    """Engines whose serving tests must run, not skip (`.ci/serving` sets this per virtualenv,
    so that a broken install fails the job instead of passing it as skipped)."""
    return {e.strip() for e in os.environ.get("STAGEVAR_SERVING_REQUIRE", "").split(",") if e.strip()}


def import_or_skip(module: str, engine: str):
    """`pytest.importorskip`, except where `engine` is required: then a failed import fails."""
    if engine in required_engines():
        return importlib.import_module(module)
    return pytest.importorskip(module, reason=f"needs stagevar[serve-{engine}] (run .ci/serving)")


def concurrent_images(fetch, count: int, timeout_s: float) -> list:
    """`fetch(i)` for i < count in `count` threads released together; their results, in order.

    Every thread's exception is collected and re-raised here, and a thread still running after
    the time limit fails the test instead of hanging it.
    """
    results, errors = [None] * count, []
    start = threading.Barrier(count)

    def worker(i):
        try:
            start.wait(timeout=timeout_s)
            results[i] = fetch(i)
        except Exception as exc:  # collected and asserted below; a thread must not swallow it
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=4 * timeout_s)
    assert not any(t.is_alive() for t in threads) and errors == []
    return results
