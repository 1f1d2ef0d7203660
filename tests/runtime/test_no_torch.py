"""The runtime's shared definitions must import and work with torch unavailable."""

import subprocess
import sys
import textwrap

MODULES = ["schedules", "rope", "rank_table", "stage_plan", "sampling", "resize", "codes", "lowrank", "noise"]


def test_runtime_modules_import_and_run_without_torch():
    code = textwrap.dedent(
        f"""
        import sys
        sys.modules["torch"] = None  # any "import torch" now raises ImportError
        import importlib
        for name in {MODULES!r}:
            importlib.import_module("stagevar.runtime." + name)
        from stagevar.runtime.schedules import get_schedule
        from stagevar.runtime.stage_plan import make_plan
        from stagevar.runtime.rope import rope_cos_sin
        from stagevar.runtime.noise import draw_request_noise
        s = get_schedule()
        p = make_plan("stagevar", s)
        rope_cos_sin(s, 128)
        draw_request_noise(0, p, s, 1, 32)
        assert not any(m == "torch" or m.startswith("torch.") for m, v in sys.modules.items() if v is not None)
        print("ok")
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
