"""Session-wide fixtures: the tiny model and one export of it, shared by the slow-to-build tests."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def _private_verification_records(tmp_path_factory):
    """Verification records (runtime/verification_record.py) go to a per-session folder, so the
    tests neither read a developer's ~/.cache/stagevar nor leave records there."""
    folder = tmp_path_factory.mktemp("stagevar-cache")
    old = os.environ.get("STAGEVAR_CACHE_DIR")
    os.environ["STAGEVAR_CACHE_DIR"] = str(folder)
    yield folder
    if old is None:
        os.environ.pop("STAGEVAR_CACHE_DIR", None)
    else:
        os.environ["STAGEVAR_CACHE_DIR"] = old


@pytest.fixture(scope="session")
def tiny_bundle():
    from stagevar.exporter.infinity.model_bundle import InfinityBundle
    from stagevar.exporter.infinity.presets import infinity_tiny

    return InfinityBundle.random(infinity_tiny(), seed=0)


@pytest.fixture(scope="session")
def tiny_artifacts(tiny_bundle, tmp_path_factory):
    """infinity-tiny exported once (fp32, aspects 1:1 and 2:1); treat as read-only.

    STAGEVAR_TINY_ARTIFACTS=DIR reuses such an export (made by this fixture earlier, from
    tiny_bundle) instead of exporting again: for reruns on a busy machine."""
    import os
    from pathlib import Path

    from stagevar.exporter.infinity.export_artifacts import export_artifacts

    if os.environ.get("STAGEVAR_TINY_ARTIFACTS"):
        return Path(os.environ["STAGEVAR_TINY_ARTIFACTS"])

    out = tmp_path_factory.mktemp("artifacts") / "infinity-tiny"
    return export_artifacts(tiny_bundle, out, aspects=("1:1", "2:1"))


@pytest.fixture(scope="session")
def shapes_artifacts(tmp_path_factory):
    """The default export (infinity-shapes, its shipped weights and rank table) made once, as the
    README's first command makes it; treat as read-only. STAGEVAR_SHAPES_ARTIFACTS=DIR reuses one."""
    import os
    from pathlib import Path

    from stagevar.exporter.cli_export import main as export_main

    if os.environ.get("STAGEVAR_SHAPES_ARTIFACTS"):
        return Path(os.environ["STAGEVAR_SHAPES_ARTIFACTS"])
    out = tmp_path_factory.mktemp("shapes") / "infinity-shapes"
    assert export_main(["--out", str(out)]) == 0
    return out


@pytest.fixture(scope="session")
def var_tiny_bundle():
    from stagevar.exporter.var.bundle import VarBundle
    from stagevar.exporter.var.config import var_tiny

    return VarBundle.random(var_tiny(), seed=0)


@pytest.fixture(scope="session")
def var_tiny_artifacts(var_tiny_bundle, tmp_path_factory):
    """var-tiny exported once (fp32); treat as read-only. Here (not in tests/var) because the
    serving and TensorRT tests serve it too. STAGEVAR_VAR_TINY_ARTIFACTS=DIR reuses such an export."""
    from pathlib import Path

    from stagevar.exporter.var.export import export_var_artifacts

    if os.environ.get("STAGEVAR_VAR_TINY_ARTIFACTS"):
        return Path(os.environ["STAGEVAR_VAR_TINY_ARTIFACTS"])
    return export_var_artifacts(var_tiny_bundle, tmp_path_factory.mktemp("var") / "var-tiny")


@pytest.fixture(scope="session")  # session: resolved before the (session) export fixtures
def tensorrt_stack():
    """tensorrt, once cuda-python and polygraphy are importable too; skips without them, or fails
    with STAGEVAR_TRT_REQUIRE=1 (a GPU host in CI, where a missing TensorRT is a broken setup
    that must not pass as "skipped")."""
    import importlib
    import os

    missing = []
    for name in ("tensorrt", "cuda.bindings.runtime", "polygraphy"):
        try:
            importlib.import_module(name)
        except Exception as exc:  # ImportError, or the PyPI stub failing without NVIDIA's libraries
            missing.append(f"{name} ({type(exc).__name__})")
    if missing:
        reason = f"needs {', '.join(missing)}: pip install stagevar[trt] on a machine with an NVIDIA GPU"
        if os.environ.get("STAGEVAR_TRT_REQUIRE") == "1":
            pytest.fail(f"STAGEVAR_TRT_REQUIRE=1 but {reason}")
        pytest.skip(reason)
    return importlib.import_module("tensorrt")
