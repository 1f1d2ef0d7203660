"""The token-restore plugin fixtures stay in sync with the numpy reference, and ctest passes.

plugins/tests/make_reference_data.py writes plugins/tests/data/ from
stagevar.runtime.lowrank.restore_tokens; the C++ ctest (token_restore_test) checks the CPU
reference against those files. Here the fixtures are regenerated in a tmp dir and compared with
the committed ones, then (when cmake is on PATH) the plugins are configured, built and ctest run.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from stagevar.runtime.lowrank import restore_tokens

REPO = Path(__file__).resolve().parents[2]
PLUGINS = REPO / "plugins"
DATA = PLUGINS / "tests" / "data"


def _generator():
    spec = importlib.util.spec_from_file_location(
        "stagevar_make_reference_data", PLUGINS / "tests" / "make_reference_data.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_committed_fixtures_match_regenerated(tmp_path):
    gen = _generator()
    gen.write_cases(tmp_path)
    fresh_names = (tmp_path / "cases.txt").read_text().split()
    committed_names = (DATA / "cases.txt").read_text().split()
    assert committed_names == fresh_names, "case list changed: rerun make_reference_data.py"
    total = 0
    for name in fresh_names:
        committed = gen.read_case(DATA / name)
        fresh = gen.read_case(tmp_path / name)
        total += (DATA / name).stat().st_size
        assert committed["dims"] == fresh["dims"], name
        for key in ("prev", "rows", "indices"):
            np.testing.assert_array_equal(committed[key], fresh[key], err_msg=f"{name}: {key}")
        # Expected values: float64 math cast to float32; allow only last-bit summation-order noise.
        np.testing.assert_allclose(committed["expected"], fresh["expected"], rtol=0, atol=1e-6,
                                   err_msg=f"{name}: expected")
    assert total < 2 * 1024 * 1024


def test_fixtures_cover_required_cases():
    gen = _generator()
    dims = {}
    for name in (DATA / "cases.txt").read_text().split():
        case = gen.read_case(DATA / name)
        dims[name] = case["dims"]
        b, h, w, hh, ww, c, r = case["dims"]
        # Self-consistency with the numpy reference and the op's contract.
        assert case["indices"].shape == (b, r)
        for row in case["indices"]:
            assert len(set(row.tolist())) == r and (row >= 0).all() and (row < hh * ww).all()
        want = restore_tokens(case["prev"], (h, w), (hh, ww), case["rows"], case["indices"])
        np.testing.assert_allclose(case["expected"], want, rtol=0, atol=1e-6, err_msg=name)
    shapes = {(d[1], d[2], d[3], d[4]) for d in dims.values()}
    assert {(3, 5, 7, 9), (30, 60, 37, 74), (32, 32, 40, 40)} <= shapes
    assert any(d[6] == d[3] * d[4] for d in dims.values()), "need a case with r = H*W"


def test_cmake_build_and_ctest(tmp_path):
    cmake = shutil.which("cmake")
    ctest = shutil.which("ctest")
    if cmake is None or ctest is None:
        pytest.skip("cmake/ctest not on PATH: the native plugin build is not checked here")
    build = tmp_path / "build"

    def run(cmd, timeout):
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{proc.stdout}\n{proc.stderr}"
        return proc

    run([cmake, "-S", str(REPO), "-B", str(build)], timeout=60)
    run([cmake, "--build", str(build), "-j2"], timeout=600)  # CUDA: four architectures
    proc = run([ctest, "--test-dir", str(build), "--output-on-failure"], timeout=60)
    assert "100% tests passed" in proc.stdout
    # Defect 1 of issue 15: what the plugin is linked like loads alone (built where nvcc exists).
    for name in ("libstagevar_cuda_selfcontained.so", "libstagevar_trt_plugin.so"):
        if (build / name).exists():
            run(["bash", str(PLUGINS / "check_self_contained.sh"), str(build / name), str(build)], timeout=60)


def test_the_self_contained_check_refuses_the_old_plugin_linkage(tmp_path):
    """Issue 15, defect 1. Guards against check_self_contained.sh passing what broke users: a
    plugin needing a second stagevar library (and the shared cudart) found only through the
    build tree's RUNPATH."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None or shutil.which("readelf") is None:
        pytest.skip("no C compiler or readelf on PATH")
    src = tmp_path / "f.c"
    src.write_text("int f(void) { return 0; }\n")
    subprocess.run([cc, "-shared", "-fPIC", "-o", str(tmp_path / "libstagevar_plugins_cuda.so"), str(src)], check=True)
    old = tmp_path / "libstagevar_trt_plugin.so"
    subprocess.run([cc, "-shared", "-fPIC", "-o", str(old), str(src), f"-L{tmp_path}", "-Wl,--no-as-needed",
                    "-lstagevar_plugins_cuda", f"-Wl,-rpath,{tmp_path}"], check=True)
    check = PLUGINS / "check_self_contained.sh"
    proc = subprocess.run(["bash", str(check), str(old), str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 1
    assert "RUNPATH" in proc.stderr or "RPATH" in proc.stderr
    assert "libstagevar_plugins_cuda.so" in proc.stderr
    alone = tmp_path / "libalone.so"
    subprocess.run([cc, "-shared", "-fPIC", "-o", str(alone), str(src)], check=True)
    proc = subprocess.run(["bash", str(check), str(alone), str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
