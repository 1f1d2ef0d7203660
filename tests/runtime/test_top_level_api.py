"""`from stagevar import Pipeline`: the embedding entry point, lazy and torch-free."""

import subprocess
import sys
import textwrap


def _run(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_import_stagevar_is_light_and_pipeline_pulls_no_torch():
    # Guards against an eager `from .runtime.pipeline import Pipeline` in stagevar/__init__.py
    # (every CLI and `import stagevar` would load onnxruntime) and against a Pipeline that
    # imports torch (the runtime must run without it).
    out = _run(
        """
        import sys
        sys.modules["torch"] = None  # any "import torch" now raises ImportError
        import stagevar
        light = "onnxruntime" not in sys.modules and "stagevar.runtime.pipeline" not in sys.modules
        from stagevar import Pipeline, PipelineOutput, StagevarError
        from stagevar.runtime.pipeline import Pipeline as Direct
        assert Pipeline is Direct and callable(Pipeline.from_dir)
        print(light, "onnxruntime" in sys.modules)
        """
    )
    assert out == "True True"


def test_unknown_top_level_name_is_an_attribute_error():
    import pytest

    import stagevar

    with pytest.raises(AttributeError, match="no attribute 'Pipe'"):
        stagevar.Pipe  # noqa: B018
    assert "Pipeline" in dir(stagevar)
