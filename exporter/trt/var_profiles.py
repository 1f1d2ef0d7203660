"""TensorRT optimisation profiles of a VAR export's graphs (runtime/var_graph_io.py), from its
manifest alone; profiles.py dispatches here for `family: var`.

As for Infinity (profiles.py): one profile per distinct shape set of the manifest's engine
entries (one scale, rows as it runs: 2n on CFG scales, n on UNCOND and LOWRANK ones; min = opt =
max), so each scale gets its own tuned kernels with the weights resident once per graph.
class_cond runs once per request on the [cond; null] rows (2n labels), vqvae_decoder once on the
last scale's f_hat. var_fidelity gets an engine only once `stagevar-export calibrate` has added
LOWRANK entries (`var_graph_io.engine_graphs`): TensorRT cannot build an engine without a profile.
"""

from __future__ import annotations

from dataclasses import dataclass

from stagevar.runtime import var_graph_io as vio
from stagevar.runtime.errors import StagevarError

Shape = tuple[int, ...]


@dataclass(frozen=True)
class VarDims:
    """The model constants that fix VAR graph input shapes, read from manifest.json."""

    batch: int
    depth: int
    embed_dim: int
    num_heads: int
    head_dim: int
    block_chunks: int
    code_dim: int
    num_classes: int
    patch_nums: tuple[int, ...]

    @classmethod
    def from_manifest(cls, data: dict) -> "VarDims":
        try:
            model = data["model"]
            cfg = model["config"]
            return cls(batch=int(data["batch"]), depth=int(cfg["depth"]), embed_dim=int(cfg["embed_dim"]),
                       num_heads=int(cfg["num_heads"]), head_dim=int(model["head_dim"]),
                       block_chunks=int(cfg["block_chunks"]), code_dim=int(cfg["code_dim"]),
                       num_classes=int(cfg["num_classes"]), patch_nums=tuple(int(p) for p in cfg["patch_nums"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise StagevarError(f"manifest.json lacks VAR model information ({exc!r}); export again with "
                                f"this stagevar version.") from None


def var_graph_profiles(data: dict, graph: str) -> list:
    """The profiles of one VAR graph, checked against the graph's own ONNX input specs."""
    from .profiles import ProfileSpec, _check_against_spec, _input_specs

    dims = VarDims.from_manifest(data)
    names = vio.contract(graph, dims.block_chunks)[0]
    specs = _input_specs(data, graph, names)
    if graph in (vio.CLASS_COND, vio.VQVAE_DECODER):
        points = [(None, "1:1", {"n": dims.batch, "r": 2 * dims.batch})]
    else:
        points = [(i, e.get("aspect"), _scale_point(dims, e))
                  for i, e in enumerate(data.get("engines", [])) if e.get("graph") == graph]
    profiles: dict[tuple, ProfileSpec] = {}
    for entry, aspect, point in points:
        shapes, symbols = [], ({}, {}, {})
        for name in names:
            shape = _RULES[graph][_rule(name)](dims, point, name)
            mmm = (shape, shape, shape)
            _check_against_spec(graph, name, mmm, specs[name], symbols)
            if any(isinstance(d, str) for d in specs[name]["shape"]):  # a dynamic input
                shapes.append((name, mmm))
        key = tuple(shapes)
        first = profiles.get(key)
        served = (first.entries if first else ()) + ((entry,) if entry is not None else ())
        profiles[key] = ProfileSpec(first.entry if first else entry, first.aspect if first else aspect, key, served)
    return list(profiles.values())


def var_all_profiles(data: dict) -> dict[str, list]:
    """Profiles of every VAR graph that gets an engine, in var_graph_io order."""
    return {graph: var_graph_profiles(data, graph) for graph in vio.engine_graphs(data)}


def _rule(name: str) -> str:
    return "proj" if name.startswith("proj_") else name


def _scale_point(d: VarDims, e: dict) -> dict:
    """Shape variables of one engine entry: images n, rows r, tokens l, past tokens p."""
    try:
        k = int(e["scale"])
        pn = d.patch_nums[k]
        point = {"n": int(e["images"]), "r": int(e["rows"]), "l": int(e["tokens"]), "p": int(e["past_tokens"]),
                 "g": pn}
        if point["l"] != pn * pn:
            raise ValueError(f"{point['l']} tokens at a {pn}x{pn} scale")
        if e["graph"] == vio.VAR_FIDELITY:
            # The RTR cache is the previous scale's chunk outputs (a LOWRANK scale never comes first).
            point.update(c=d.patch_nums[k - 1], ranks=[int(r) for r in e["ranks"]])
            if len(point["ranks"]) != d.block_chunks or point["r"] != point["n"] or k == 0:
                raise ValueError("a LOWRANK entry needs one rank per chunk, null rows only and a previous scale")
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise StagevarError(f"manifest.json has a malformed VAR engine entry {e!r} ({exc}); export again.") from None
    return point


def _kv(d: VarDims, p: dict, rows: int) -> Shape:
    return (p["p"], d.depth, 2, rows, d.num_heads, d.head_dim)


_CLASS_COND = {"labels": lambda d, p, _: (p["r"],)}
_STEP = {
    "tokens": lambda d, p, _: (p["n"], p["l"], d.code_dim),
    "scale_index": lambda d, p, _: (),
    "sos": lambda d, p, _: (p["r"], d.embed_dim),
    "gss": lambda d, p, _: (p["r"], d.depth, 6, d.embed_dim),
    "head_ss": lambda d, p, _: (p["r"], 2, d.embed_dim),
    "past_kv": lambda d, p, _: _kv(d, p, p["r"]),
    "guidance": lambda d, p, _: (2,),
}
_FIDELITY = {
    "tokens": _STEP["tokens"],
    "scale_index": _STEP["scale_index"],
    "gss": lambda d, p, _: (p["n"], d.depth, 6, d.embed_dim),
    "head_ss": lambda d, p, _: (p["n"], 2, d.embed_dim),
    "past_kv": lambda d, p, _: _kv(d, p, p["n"]),
    "cache": lambda d, p, _: (d.block_chunks, p["n"], p["c"] * p["c"], d.embed_dim),
    "area_h": lambda d, p, _: (p["g"], p["c"]),
    "area_w": lambda d, p, _: (p["g"], p["c"]),
    "gumbel": lambda d, p, _: (d.block_chunks, p["n"], p["l"]),
    "proj": lambda d, p, name: (p["n"], p["l"], p["ranks"][int(name.split("_", 1)[1])]),
}
_DECODER = {"f_hat": lambda d, p, _: (p["n"], d.code_dim, d.patch_nums[-1], d.patch_nums[-1])}
_RULES = {vio.CLASS_COND: _CLASS_COND, vio.VAR_STEP: _STEP, vio.VAR_FIDELITY: _FIDELITY, vio.VQVAE_DECODER: _DECODER}
