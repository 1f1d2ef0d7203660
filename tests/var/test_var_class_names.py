"""`stagevar-generate --class NAME`: ImageNet class names from torchvision's table where torchvision
is installed (read from its _meta.py, never imported: the runtime imports no torch), else one
sentence asking for the index."""

import importlib.util

import numpy as np
import pytest

from stagevar.runtime import imagenet_names
from stagevar.runtime.errors import StagevarError
from stagevar.runtime.imagenet_names import class_index


@pytest.fixture
def fake_torchvision(tmp_path, monkeypatch):
    """A torchvision whose _meta.py has the real file's form (a literal _IMAGENET_CATEGORIES list)
    and whose import fails loudly: the lookup must read the file, not import the package."""
    names = [f"class number {i}" for i in range(1000)]
    names[207], names[88], names[134], names[517] = "golden retriever", "macaw", "crane", "crane"
    pkg = tmp_path / "torchvision"
    (pkg / "models").mkdir(parents=True)
    (pkg / "__init__.py").write_text('raise RuntimeError("torchvision (and torch) must not be imported")\n')
    body = "".join(f"    {n!r},\n" for n in names)
    (pkg / "models" / "_meta.py").write_text(f'"""meta"""\n\n_IMAGENET_CATEGORIES = [\n{body}]\n\n_COCO = ["x"]\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    imagenet_names.imagenet_class_names.cache_clear()
    yield names
    imagenet_names.imagenet_class_names.cache_clear()


@pytest.fixture
def no_torchvision(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(imagenet_names.importlib.util, "find_spec",
                        lambda name, *a: None if name == "torchvision" else real(name, *a))
    imagenet_names.imagenet_class_names.cache_clear()
    yield
    imagenet_names.imagenet_class_names.cache_clear()


def test_names_resolve_through_torchvisions_table(fake_torchvision):
    """Bugs guarded against: an off-by-one index (a 1-based table), case or '_' mismatches, an
    ambiguous name ("crane" is two classes) silently taking the first one."""
    assert class_index("golden retriever") == 207 and class_index("Golden_Retriever ") == 207
    assert class_index("macaw") == 88 and class_index("207") == 207
    with pytest.raises(StagevarError, match=r"names 2 ImageNet classes \(134, 517\)"):
        class_index("crane")
    with pytest.raises(StagevarError, match="close: golden retriever"):
        class_index("golden retrievr")


def test_without_torchvision_a_name_asks_for_the_index(no_torchvision):
    assert class_index("88") == 88  # indices never need the table
    with pytest.raises(StagevarError) as info:
        class_index("golden retriever")
    message = str(info.value)
    assert "pass the class index instead" in message and "\n" not in message


def test_generate_cli_takes_a_name_or_refuses_it(var_tiny_artifacts, tmp_path, capsys, fake_torchvision, monkeypatch):
    """The same image for --class 'golden retriever' as for --class 207 (with the table), and
    exit 2 with one line without it."""
    from PIL import Image

    from stagevar.runtime.cli_generate import entry

    by_name, by_index = tmp_path / "name.png", tmp_path / "index.png"
    assert entry([str(var_tiny_artifacts), "--class", "golden retriever", "--seed", "1", "--out", str(by_name)]) == 0
    assert entry([str(var_tiny_artifacts), "--class", "207", "--seed", "1", "--out", str(by_index)]) == 0
    np.testing.assert_array_equal(np.asarray(Image.open(by_name)), np.asarray(Image.open(by_index)))
    capsys.readouterr()
    monkeypatch.setattr(imagenet_names.importlib.util, "find_spec", lambda name, *a: None)
    imagenet_names.imagenet_class_names.cache_clear()
    assert entry([str(var_tiny_artifacts), "--class", "macaw", "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert "pass the class index instead" in err and len(err.splitlines()) == 1
