"""`stagevar-generate --class` by name: ImageNet-1k class names, where an installed package has them.

stagevar ships no class-name table of its own. torchvision carries the 1000 names (in index order)
as the literal `_IMAGENET_CATEGORIES` list of `torchvision/models/_meta.py`; that file is read and
parsed here, never imported, because importing torchvision imports torch and the runtime does not
(DESIGN.md section 1). Without torchvision a name gets one sentence asking for the index.
"""

from __future__ import annotations

import ast
import difflib
import functools
import importlib.util
from pathlib import Path

from .errors import StagevarError, shown

TABLE_SOURCE = "torchvision/models/_meta.py"


@functools.lru_cache(maxsize=1)
def imagenet_class_names() -> tuple[str, ...] | None:
    """The 1000 ImageNet class names in index order, or None when no installed package has them."""
    try:
        spec = importlib.util.find_spec("torchvision")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = Path(folder) / "models" / "_meta.py"
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (OSError, SyntaxError, UnicodeDecodeError):
            continue
        for node in tree.body:
            if (isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "_IMAGENET_CATEGORIES"
                                                     for t in node.targets)):
                try:
                    names = ast.literal_eval(node.value)
                except ValueError:
                    break
                if isinstance(names, list) and len(names) == 1000 and all(isinstance(n, str) for n in names):
                    return tuple(names)
    return None


def class_index(text: str) -> int:
    """An ImageNet class index from `--class` text: an index ("207") or a class name ("golden
    retriever", case and '_' / ' ' ignored). One sentence when a name cannot be resolved."""
    text = str(text).strip()
    if text.lstrip("-").isdigit():
        return int(text)
    names = imagenet_class_names()
    if names is None:
        raise StagevarError(f"--class {shown(text)} is a name, and no installed package provides the ImageNet class "
                            f"names (torchvision does); pass the class index instead, e.g. --class 207.")
    key = _key(text)
    matches = [i for i, name in enumerate(names) if _key(name) == key]
    if len(matches) == 1:
        return matches[0]
    if matches:  # the table has a few names twice (e.g. "crane": the bird and the machine)
        raise StagevarError(f"--class {shown(text)} names {len(matches)} ImageNet classes "
                            f"({', '.join(map(str, matches))}); pass the index you mean.")
    close = difflib.get_close_matches(key, [_key(n) for n in names], n=3, cutoff=0.75)
    hint = f" (close: {', '.join(close)})" if close else ""
    raise StagevarError(f"--class {shown(text)} is not an ImageNet class name{hint}; pass the class index or a "
                        f"name from torchvision's table.")


def _key(name: str) -> str:
    return " ".join(name.lower().replace("_", " ").split())
