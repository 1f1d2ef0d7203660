"""Session-wide fixtures: the tiny model and one export of it, shared by the slow-to-build tests."""

from __future__ import annotations

import pytest


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
