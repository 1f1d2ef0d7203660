"""var-tiny (random weights) and one export of it, shared by the VAR tests that need graphs."""

import pytest


@pytest.fixture(scope="session")
def var_tiny_bundle():
    from stagevar.exporter.var.bundle import VarBundle
    from stagevar.exporter.var.config import var_tiny

    return VarBundle.random(var_tiny(), seed=0)


@pytest.fixture(scope="session")
def var_tiny_artifacts(var_tiny_bundle, tmp_path_factory):
    """var-tiny exported once (fp32); treat as read-only."""
    from stagevar.exporter.var.export import export_var_artifacts

    return export_var_artifacts(var_tiny_bundle, tmp_path_factory.mktemp("var") / "var-tiny")
