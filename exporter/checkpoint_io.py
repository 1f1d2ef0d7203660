"""Family-independent checkpoint reading, strict matching and writing.

Formats read: a single torch file (``.pth``/``.pt``/``.bin``, optionally wrapped in a dict such as
``{"vae": state_dict}``), a ``.safetensors`` file, or a folder holding either an HF-style sharded
checkpoint (``*.index.json`` with a ``weight_map``) or exactly one weights file. Formats written:
``.pth``/``.pt``/``.safetensors`` files and HF-style sharded safetensors folders (the Infinity-8B
layout). Every problem with a user-supplied file surfaces as a one-sentence ``StagevarError``;
matching is always strict (missing, unexpected and mis-shaped keys are all reported).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from torch import nn

from stagevar.runtime.errors import StagevarError

TORCH_SUFFIXES = (".pth", ".pt", ".bin")
SAFETENSORS_SUFFIX = ".safetensors"
# Keys under which training code commonly nests the tensors of a saved state dict.
WRAPPER_KEYS = ("model", "state_dict", "module", "vae", "ema")
# How many key names an error message lists before it only gives the count.
_LIST_FIRST = 5

StateDict = dict[str, torch.Tensor]


# --------------------------------------------------------------------------------------------
# reading


def read_state_dict(
    path: str | os.PathLike, wrapper_key: str | tuple[str, ...] | None = None
) -> StateDict:
    """Read a state dict from a torch file, a safetensors file or a checkpoint folder.

    ``wrapper_key`` picks the entry of a torch file's top-level dict that holds the tensors
    (e.g. ``"vae"`` for the official Infinity VAE file). ``None`` means the top-level dict is
    the state dict itself. A tuple names candidates: the first one present is used, and the
    top-level dict itself when none is present. Safetensors files are flat and ignore it.
    Raises ``StagevarError`` for a missing path, an unreadable file or an unexpected layout.
    """
    path = Path(path)
    if not path.exists():
        raise StagevarError(f"Checkpoint path {path} does not exist; pass the path of a .pth, "
                            f".safetensors or sharded checkpoint folder.")
    if path.is_dir():
        return _read_folder(path, wrapper_key)
    return _read_file(path, wrapper_key)


def _read_file(path: Path, wrapper_key) -> StateDict:
    suffix = path.suffix.lower()
    if suffix == SAFETENSORS_SUFFIX:
        return _read_safetensors(path)
    if suffix in TORCH_SUFFIXES:
        return _unwrap(_read_torch(path), path, wrapper_key)
    raise StagevarError(f"Checkpoint file {path} has an unknown extension; expected one of "
                        f"{', '.join(TORCH_SUFFIXES + (SAFETENSORS_SUFFIX,))}.")


def _read_safetensors(path: Path) -> StateDict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return dict(load_file(str(path), device="cpu"))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise StagevarError(f"Checkpoint file {path} is not a readable safetensors file "
                            f"({_first_line(exc)}); re-download or re-export it.") from exc


def _read_torch(path: Path) -> object:
    # mmap keeps multi-GB .pth files out of RAM until a tensor is touched; files in the legacy
    # (pre zip) torch format cannot be memory-mapped, so those fall back to a plain load.
    last_exc: Exception | None = None
    for mmap in (True, False):
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        except Exception as exc:  # torch raises many types (pickle, zip, runtime) for bad files
            last_exc = exc
    raise StagevarError(_torch_refusal(path, last_exc)) from None


# A torch checkpoint is a zip archive (torch >= 1.6) or a legacy pickle stream (protocol 2+).
_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_MAGIC = b"\x80"


def _torch_refusal(path: Path, exc: Exception | None) -> str:
    """Our one sentence for a torch file that does not load with weights_only=True.

    torch's own text is not forwarded: it carries terminal colour codes and advises loading with
    weights_only=False, which would run whatever code the file's pickle holds.
    """
    import pickle
    import re
    import zipfile

    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as err:
        return f"Checkpoint file {path} cannot be read ({err.strerror}); check its permissions."
    text = str(exc or "")
    if isinstance(exc, pickle.UnpicklingError) or "Weights only load failed" in text:
        found = re.search(r"GLOBAL ([\w.]+)", text)
        what = f" (such as {found.group(1)})" if found else ""
        return (f"Checkpoint file {path} is not a safe checkpoint: besides tensors it holds pickled Python "
                f"objects{what} that stagevar does not load, since unpickling them can run arbitrary code; "
                f"re-save only the state dict (torch.save(model.state_dict(), ...)) or convert it to .safetensors.")
    if head.startswith(_ZIP_MAGIC):
        if not zipfile.is_zipfile(path):
            return (f"Checkpoint file {path} is truncated (its zip archive has no central directory: an "
                    f"interrupted download or copy); download or copy it again.")
        return (f"Checkpoint file {path} is a zip archive but not a readable torch checkpoint (corrupted, or "
                f"another kind of archive); download it again.")
    if head.startswith(_PICKLE_MAGIC):
        if "EOF" in text or isinstance(exc, EOFError):
            return f"Checkpoint file {path} is truncated (it ends early); download or copy it again."
        return f"Checkpoint file {path} is a corrupted legacy torch checkpoint; download it again."
    return (f"Checkpoint file {path} is not a torch checkpoint (it is neither a torch zip archive nor a "
            f"pickle); pass the .pth/.bin weights file itself.")


def _unwrap(obj: object, path: Path, wrapper_key) -> StateDict:
    if not isinstance(obj, Mapping):
        raise StagevarError(f"Checkpoint file {path} holds a {type(obj).__name__}, not a dict of "
                            f"tensors; expected a state dict.")
    if isinstance(wrapper_key, tuple):
        wrapper_key = next((k for k in wrapper_key if k in obj), None)
    if wrapper_key is not None:
        if wrapper_key not in obj:
            raise StagevarError(f"Checkpoint file {path} has no '{wrapper_key}' entry (it has "
                                f"{_preview(sorted(map(str, obj)))}); expected the state dict "
                                f"under that key.")
        obj = obj[wrapper_key]
        if not isinstance(obj, Mapping):
            raise StagevarError(f"Checkpoint file {path} holds a {type(obj).__name__} under "
                                f"'{wrapper_key}', not a dict of tensors.")
    bad = [str(k) for k, v in obj.items() if not (isinstance(k, str) and torch.is_tensor(v))]
    if bad:
        wrappers = [k for k in WRAPPER_KEYS if isinstance(obj.get(k), Mapping)]
        hint = (f"pass wrapper_key='{wrappers[0]}' to read the state dict nested under it"
                if wrappers else "expected a flat dict of name -> tensor")
        raise StagevarError(f"Checkpoint file {path} has entries that are not tensors "
                            f"({_preview(bad)}); {hint}.")
    return dict(obj)


def _read_folder(folder: Path, wrapper_key) -> StateDict:
    indexes = sorted(folder.glob("*.index.json"))
    if len(indexes) > 1:
        # HF folders may carry both a .bin and a .safetensors index: prefer safetensors.
        st = [p for p in indexes if p.name.endswith(".safetensors.index.json")]
        indexes = st if len(st) == 1 else indexes
    if len(indexes) > 1:
        raise StagevarError(f"Checkpoint folder {folder} has several index files "
                            f"({', '.join(p.name for p in indexes)}); keep only one.")
    if indexes:
        return _read_sharded(indexes[0], wrapper_key)
    weight_suffixes = TORCH_SUFFIXES + (SAFETENSORS_SUFFIX,)
    files = sorted(p for p in folder.iterdir()
                   if p.is_file() and p.suffix.lower() in weight_suffixes)
    if len(files) == 1:
        return _read_file(files[0], wrapper_key)
    if not files:
        raise StagevarError(f"Checkpoint folder {folder} holds no *.index.json and no weights "
                            f"file; expected a sharded HF checkpoint or one .pth/.safetensors file.")
    raise StagevarError(f"Checkpoint folder {folder} holds several weights files but no "
                        f"*.index.json; pass the path of one file instead.")


def _read_sharded(index_path: Path, wrapper_key) -> StateDict:
    try:
        weight_map = json.loads(index_path.read_text())["weight_map"]
        if not isinstance(weight_map, dict):
            raise TypeError("weight_map is not an object")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise StagevarError(f"Checkpoint index {index_path} is not a valid HF index file "
                            f"({_first_line(exc)}); expected JSON with a 'weight_map'.") from exc
    out: StateDict = {}
    for shard_name in sorted(set(weight_map.values())):
        shard = index_path.parent / shard_name
        if not shard.is_file():
            raise StagevarError(f"Checkpoint shard {shard} named in {index_path.name} is missing; "
                                f"copy the complete checkpoint folder.")
        for key, tensor in _read_file(shard, wrapper_key).items():
            if key in out:
                raise StagevarError(f"Checkpoint key {key} appears in more than one shard of "
                                    f"{index_path.parent}; the checkpoint is inconsistent.")
            out[key] = tensor
    absent = [k for k, shard in weight_map.items() if k not in out]
    if absent:
        raise StagevarError(f"Checkpoint index {index_path} lists {len(absent)} keys that its "
                            f"shards do not hold ({_preview(absent)}); re-download the shards.")
    return out


# --------------------------------------------------------------------------------------------
# strict matching


def match_state_dict(
    module_or_expected: nn.Module | Mapping[str, Iterable[int]],
    found: Mapping[str, object],
    what: str,
    ignore_prefixes: Iterable[str] = (),
    ignore_keys: Iterable[str] = (),
    hint: str | None = None,
) -> None:
    """Check that ``found`` has exactly the expected keys and shapes; raise otherwise.

    ``module_or_expected`` is a module (its ``state_dict()`` keys and shapes, persistent buffers
    included; a meta-device module works) or a mapping key -> shape. ``found`` maps keys to
    tensors or shapes. Keys of ``found`` that equal one of ``ignore_keys`` or start with one of
    ``ignore_prefixes`` are known checkpoint-only extras and are skipped. Raises one
    ``StagevarError`` naming the missing keys, the unexpected keys and the shape mismatches.
    """
    expected = _shapes(module_or_expected.state_dict()
                       if isinstance(module_or_expected, nn.Module) else module_or_expected)
    prefixes = tuple(ignore_prefixes)
    skip = set(ignore_keys)
    got = {k: v for k, v in _shapes(found).items()
           if k not in skip and not (prefixes and k.startswith(prefixes))}
    missing = [k for k in expected if k not in got]
    unexpected = [k for k in got if k not in expected]
    wrong = [f"{k} is {_fmt(got[k])} but the model expects {_fmt(expected[k])}"
             for k in expected if k in got and got[k] != expected[k]]
    if not (missing or unexpected or wrong):
        return
    parts = []
    if missing:
        parts.append(f"missing {_counted(missing)}")
    if unexpected:
        parts.append(f"unexpected {_counted(unexpected)}")
    if wrong:
        parts.append(f"wrong shape {_counted(wrong)}")
    hint = hint or f"Check that the weights path points at the right {what} model."
    raise StagevarError(f"The {what} checkpoint does not match: {'; '.join(parts)}. {hint}")


def load_strict(
    module: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    what: str,
    ignore_prefixes: Iterable[str] = (),
    ignore_keys: Iterable[str] = (),
    hint: str | None = None,
) -> nn.Module:
    """Strictly match ``state_dict`` against ``module`` then load it; returns the module.

    Only the module's own keys are passed to ``load_state_dict(strict=True)``: the ignored
    extras allowed by ``ignore_prefixes``/``ignore_keys`` are dropped after matching.
    """
    match_state_dict(module, state_dict, what, ignore_prefixes, ignore_keys, hint)
    own = module.state_dict().keys()
    module.load_state_dict({k: state_dict[k] for k in own}, strict=True)
    return module


def _shapes(mapping: Mapping[str, object]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(int(d) for d in (v.shape if hasattr(v, "shape") else v))
            for k, v in mapping.items()}


def _fmt(shape: tuple[int, ...]) -> str:
    return str(tuple(shape))  # Python tuple spelling, as the reference key tables use


def _counted(items: list[str]) -> str:
    listed = ", ".join(items[:_LIST_FIRST])
    more = len(items) - _LIST_FIRST
    return listed + (f" (and {more} more, {len(items)} in all)" if more > 0 else "")


def _preview(items: list[str]) -> str:
    return ", ".join(items[:_LIST_FIRST]) + (", ..." if len(items) > _LIST_FIRST else "")


def _first_line(exc: BaseException | None) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


# --------------------------------------------------------------------------------------------
# writing


def write_state_dict(
    state_dict: Mapping[str, torch.Tensor], path: str | os.PathLike,
    wrapper_key: str | None = None,
) -> Path:
    """Write a state dict to ``.pth``/``.pt`` (torch.save) or ``.safetensors``, atomically.

    With ``wrapper_key`` a torch file stores ``{wrapper_key: state_dict}`` (the official VAE
    layout); safetensors files are always flat. Returns the path written.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".pth", ".pt", SAFETENSORS_SUFFIX):
        raise StagevarError(f"Cannot write a checkpoint to {path}; use a .pth, .pt or "
                            f".safetensors file name.")
    if suffix == SAFETENSORS_SUFFIX:
        from safetensors.torch import save_file

        flat = _own_storage(state_dict)
        _atomic_write(path, lambda tmp: save_file(flat, str(tmp)))
    else:
        obj = dict(state_dict) if wrapper_key is None else {wrapper_key: dict(state_dict)}
        _atomic_write(path, lambda tmp: torch.save(obj, tmp))
    return path


def write_sharded(
    state_dict: Mapping[str, torch.Tensor], folder: str | os.PathLike, max_shard_bytes: int
) -> Path:
    """Write an HF-style sharded safetensors folder; returns the index file's path.

    Shards are filled greedily in key order up to ``max_shard_bytes`` (a larger tensor gets a
    shard of its own) and named ``model-00001-of-0000N.safetensors``; the index
    ``model.safetensors.index.json`` holds ``{"metadata": {"total_size"}, "weight_map"}``.
    """
    from safetensors.torch import save_file

    if max_shard_bytes <= 0:
        raise ValueError("max_shard_bytes must be positive")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = _own_storage(state_dict)
    groups: list[list[str]] = [[]]
    size = 0
    for key, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        if groups[-1] and size + nbytes > max_shard_bytes:
            groups.append([])
            size = 0
        groups[-1].append(key)
        size += nbytes
    n = len(groups)
    weight_map: dict[str, str] = {}
    for i, keys in enumerate(groups, start=1):
        name = f"model-{i:05d}-of-{n:05d}.safetensors"
        shard = {k: tensors[k] for k in keys}
        _atomic_write(folder / name, lambda tmp, shard=shard: save_file(shard, str(tmp)))
        weight_map.update({k: name for k in keys})
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    index_path = folder / "model.safetensors.index.json"
    _atomic_write(index_path, lambda tmp: Path(tmp).write_text(json.dumps(index, indent=2)))
    return index_path


def _own_storage(state_dict: Mapping[str, torch.Tensor]) -> StateDict:
    # safetensors refuses tensors that share storage (tied weights, views): give those a copy.
    out: StateDict = {}
    seen: set[int] = set()
    for key, t in state_dict.items():
        t = t.detach().cpu().contiguous()
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr in seen or storage.nbytes() != t.numel() * t.element_size():
            t = t.clone()
        seen.add(t.untyped_storage().data_ptr())
        out[key] = t
    return out


def _atomic_write(path: Path, write) -> None:
    # Write beside the target and rename, so an interrupted write never leaves a file that
    # looks complete.
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# --------------------------------------------------------------------------------------------
# hashing


def sha256_file(path: str | os.PathLike, chunk_bytes: int = 1 << 20) -> str:
    """Hex sha256 of one file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_tree(folder: str | os.PathLike) -> str:
    """Hex sha256 of a folder: over each regular file's relative POSIX path and its sha256.

    Files are visited in sorted path order, so the digest does not depend on the file system's
    listing order; renaming, adding, removing or changing any file changes it.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise StagevarError(f"Cannot hash {folder}: it is not a folder.")
    digest = hashlib.sha256()
    files = sorted((p.relative_to(folder).as_posix(), p) for p in folder.rglob("*") if p.is_file())
    for rel, p in files:
        digest.update(f"{rel}\0{sha256_file(p)}\n".encode())
    return digest.hexdigest()
