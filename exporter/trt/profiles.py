"""TensorRT optimisation profiles of every graph, derived from an export's manifest alone.

DESIGN.md section 4: one engine per graph kind, one profile per distinct shape set of the
manifest's engine entries (one scale: min = opt = max for its tokens, past tokens, ranks and
rows), so each scale gets tuned kernels while the weights stay resident once per graph. Entries
with equal shapes (the first scales of every aspect, mirrored aspects) share one profile: at 1M
with 7 aspects that is 58 step profiles instead of 112. The text length t is the one range
inside a step/fidelity profile (1..max_length tokens). The TensorRT backend pads prompts to a few
fixed text lengths (TEXT_BUCKETS, and max_length), so a new prompt length does not change any
context's shapes and the CUDA graphs captured for earlier requests replay: text_encoder and
text_cond get one exact profile per bucket, vae_decoder one per aspect template.

Pure Python (no TensorRT): the shapes are what the runtime pipeline binds, input by input, so
they can be tested on any machine against a real ONNX Runtime run.
"""

from __future__ import annotations

from dataclasses import dataclass

from stagevar.runtime import graph_io as gio
from stagevar.runtime.errors import StagevarError

# The kernels TensorRT picks are tuned for the `opt` shape and valid over [min, max]. Prompts of
# text-to-image benchmarks are mostly 10-100 T5 tokens; 128 is a typical upper end.
TEXT_OPT_TOKENS = 128
TEXT_MIN_TOKENS = 1
# Text lengths the TensorRT backend pads prompts to (with max_length): most prompts fit 64.
TEXT_BUCKETS = (64, 128)

Shape = tuple[int, ...]


@dataclass(frozen=True)
class ModelDims:
    """The model constants that fix graph input shapes, read from manifest.json."""

    batch: int
    depth: int
    embed_dim: int
    num_heads: int
    head_dim: int
    block_chunks: int
    bits_per_token: int
    code_dim: int
    patchify: bool
    text_width: int
    max_text_tokens: int

    @classmethod
    def from_manifest(cls, data: dict) -> "ModelDims":
        try:
            model = data["model"]
            cfg = model["config"]
            return cls(
                batch=int(data["batch"]), depth=int(cfg["depth"]), embed_dim=int(cfg["embed_dim"]),
                num_heads=int(cfg["num_heads"]), head_dim=int(model["head_dim"]),
                block_chunks=int(cfg["block_chunks"]), bits_per_token=int(model["bits_per_token"]),
                code_dim=int(cfg["code_dim"]), patchify=bool(cfg["patchify"]),
                text_width=int(model["text_encoder"]["d_model"]),
                max_text_tokens=int(data["tokenizer"]["max_length"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise StagevarError(f"manifest.json lacks model information ({exc!r}); export again with "
                                f"this stagevar version.") from None

    @property
    def text_buckets(self) -> tuple[int, ...]:
        """The padded text lengths of the text graphs' profiles: TEXT_BUCKETS below max, and max."""
        top = self.max_text_tokens
        return tuple(sorted({b for b in TEXT_BUCKETS if b < top} | {top}))

    @property
    def text_range(self) -> tuple[int, int, int]:
        """(min, opt, max) text tokens."""
        top = self.max_text_tokens
        return TEXT_MIN_TOKENS, min(TEXT_OPT_TOKENS, top), top


@dataclass(frozen=True)
class ProfileSpec:
    """One optimisation profile: min/opt/max shape of every input with a dynamic axis.

    `entry` is the index into manifest["engines"] (step, fidelity), `aspect` the aspect template
    (step, fidelity, vae_decoder) of the first entry it serves; both None for the text graphs.
    `entries` lists every engine entry whose shapes it covers (de-duplicated by shape).
    """

    entry: int | None
    aspect: str | None
    shapes: tuple[tuple[str, tuple[Shape, Shape, Shape]], ...]
    entries: tuple[int, ...] = ()

    def shape_dict(self) -> dict[str, tuple[Shape, Shape, Shape]]:
        return dict(self.shapes)

    def to_json(self) -> dict:
        """The manifest form: {"entry", "aspect", "shapes": {input: [min, opt, max]}}."""
        return {"entry": self.entry, "aspect": self.aspect, "entries": list(self.entries),
                "shapes": {name: [list(s) for s in mmm] for name, mmm in self.shapes}}

    def contains(self, bound: dict[str, Shape]) -> bool:
        """Whether every given input shape lies inside this profile (inputs it does not list,
        the static ones, are ignored)."""
        for name, (lo, _, hi) in self.shapes:
            shape = bound.get(name)
            if shape is None:
                continue
            shape = tuple(int(x) for x in shape)
            if len(shape) != len(lo) or any(not a <= x <= b for a, x, b in zip(lo, shape, hi)):
                return False
        return True


def graph_input_names(graph: str, num_chunks: int) -> tuple[str, ...]:
    """Input names of `graph` by the graph_io contract."""
    return {
        gio.TEXT_ENCODER: gio.TEXT_ENCODER_INPUTS, gio.TEXT_COND: gio.TEXT_COND_INPUTS,
        gio.STEP: gio.STEP_INPUTS, gio.VAE_DECODER: gio.VAE_INPUTS,
        gio.FIDELITY: gio.fidelity_inputs(num_chunks),
    }[graph]


def engine_graphs(data: dict) -> tuple[str, ...]:
    """The graphs of an export that get engines, by its model family."""
    if data.get("family") == "var":
        from stagevar.runtime.var_graph_io import engine_graphs as var_engine_graphs

        return var_engine_graphs(data)
    return gio.GRAPHS


def all_profiles(data: dict) -> dict[str, list[ProfileSpec]]:
    """Profiles of every graph of the export that gets an engine, in graph_io order."""
    return {graph: graph_profiles(data, graph) for graph in engine_graphs(data)}


def graph_profiles(data: dict, graph: str) -> list[ProfileSpec]:
    """The profiles of one graph, checked against the graph's own ONNX input specs.

    Profiles are in the order of the first engine entry each serves; equal shape sets share one
    profile (`entries`). Raises
    StagevarError when the export's inputs do not follow this stagevar's graph contract.
    """
    if data.get("family") == "var":  # class-conditional VAR: its own graphs and shape rules
        from .var_profiles import var_graph_profiles

        return var_graph_profiles(data, graph)
    dims = ModelDims.from_manifest(data)
    names = graph_input_names(graph, dims.block_chunks)
    specs = _input_specs(data, graph, names)
    text = dims.text_range
    if graph in (gio.TEXT_ENCODER, gio.TEXT_COND):
        points = [(None, None, {"n": dims.batch, "t": t}) for t in dims.text_buckets]
    elif graph == gio.VAE_DECODER:
        points = [(None, aspect, _vae_point(dims, data, aspect)) for aspect in _aspects(data)]
    else:
        points = [(i, e.get("aspect"), _scale_point(dims, data, e))
                  for i, e in enumerate(data.get("engines", [])) if e.get("graph") == graph]
    profiles: dict[tuple, ProfileSpec] = {}  # shapes -> profile: one per distinct shape set
    for entry, aspect, point in points:
        shapes = []
        symbols: tuple[dict, dict, dict] = ({}, {}, {})  # symbolic dim -> value at min/opt/max
        for name in names:
            mmm = tuple(_SHAPES[graph][_rule(name)](dims, {**point, "t": t}, name) for t in _ts(point))
            _check_against_spec(graph, name, mmm, specs[name], symbols)
            if any(isinstance(d, str) for d in specs[name]["shape"]):  # a dynamic input
                shapes.append((name, mmm))
        key = tuple(shapes)
        first = profiles.get(key)
        served = (first.entries if first else ()) + ((entry,) if entry is not None else ())
        profiles[key] = ProfileSpec(first.entry if first else entry, first.aspect if first else aspect, key, served)
    return list(profiles.values())


# --------------------------------------------------------------------------------------------
# per-input shape rules: (dims, point, name) -> shape at one text length point["t"]


def _ts(point: dict) -> tuple[int, int, int]:
    t = point.get("t")
    return t if isinstance(t, tuple) else (t, t, t)


def _rule(name: str) -> str:
    return "proj" if name.startswith("proj_") else name


def _kv(d: ModelDims, rows: int, tokens) -> Shape:
    return (tokens, d.depth, 2, rows, d.num_heads, d.head_dim)


def _text_kv(d: ModelDims, rows: int, t: int) -> Shape:
    return (d.depth, 2, rows, d.num_heads, t, d.head_dim)


_TEXT_ENCODER = {
    "input_ids": lambda d, p, _: (p["n"], p["t"]),
    "attention_mask": lambda d, p, _: (p["n"], p["t"]),
}
_TEXT_COND = {
    "text_features": lambda d, p, _: (p["n"], p["t"], d.text_width),
    "attention_mask": lambda d, p, _: (p["n"], p["t"]),
}
_COMMON = {  # step and fidelity; r = rows (2n on CFG scales), l = tokens of the scale
    "codes": lambda d, p, _: (p["n"], p["l"], d.bits_per_token),
    "scale_index": lambda d, p, _: (),
    "tau": lambda d, p, _: (),
    "gss": lambda d, p, _: (p["r"], 6, d.embed_dim),
    "head_ss": lambda d, p, _: (p["r"], 2, d.embed_dim),
    "text_kv": lambda d, p, _: _text_kv(d, p["r"], p["t"]),
    "text_bias": lambda d, p, _: (p["r"], p["t"]),
    "past_kv": lambda d, p, _: _kv(d, p["r"], p["p"]),
    "rope_cos": lambda d, p, _: (p["l"], d.head_dim // 2),
    "rope_sin": lambda d, p, _: (p["l"], d.head_dim // 2),
}
_STEP = {
    **_COMMON,
    "sos": lambda d, p, _: (p["r"], d.embed_dim),
    "guidance": lambda d, p, _: (2,),
}
_FIDELITY = {
    **_COMMON,
    "cache": lambda d, p, _: (d.block_chunks, p["n"], p["ch"] * p["cw"], d.embed_dim),
    # 1-D area-resize matrices from the cache grid (ch, cw) to this grid (gh, gw) ...
    "area_h": lambda d, p, _: (p["gh"], p["ch"]),
    "area_w": lambda d, p, _: (p["gw"], p["cw"]),
    # ... and the single kron matrix of exports made before them (same semantics).
    "area": lambda d, p, _: (p["l"], p["ch"] * p["cw"]),
    "gumbel": lambda d, p, _: (d.block_chunks, p["n"], p["l"]),
    "proj": lambda d, p, name: (p["n"], p["l"], p["ranks"][int(name.split("_", 1)[1])]),
}
_VAE = {
    "codes": lambda d, p, _: (p["n"], d.code_dim, p["fh"], p["fw"]),
}
_SHAPES = {gio.TEXT_ENCODER: _TEXT_ENCODER, gio.TEXT_COND: _TEXT_COND, gio.STEP: _STEP,
           gio.FIDELITY: _FIDELITY, gio.VAE_DECODER: _VAE}


def _scale_point(d: ModelDims, data: dict, e: dict) -> dict:
    """Shape variables of one engine entry (one scale of one aspect, rows as it runs)."""
    try:
        k = int(e["scale"])
        if e["aspect"] not in (data.get("schedules") or {}):
            raise KeyError(f"aspect {e['aspect']!r} has no schedule")
        gh, gw = (int(x) for x in e["hw"])
        point = {"n": int(e["images"]), "r": int(e["rows"]), "l": int(e["tokens"]),
                 "p": int(e["past_tokens"]), "gh": gh, "gw": gw, "t": d.text_range}
        if e["graph"] == gio.FIDELITY:
            # The RTR cache is the previous scale's chunk outputs: every plan preset runs the
            # scale before a LOWRANK one (SKIP only follows the fidelity stage), as the pipeline
            # feeds it (`prev_outputs` of the last executed scale).
            ch, cw = (int(x) for x in _scales(data, e["aspect"])[k - 1])
            point.update(ch=ch, cw=cw, ranks=[int(r) for r in e["ranks"]])
            if len(point["ranks"]) != d.block_chunks or point["r"] != point["n"]:
                raise ValueError("a LOWRANK entry needs one rank per chunk and null rows only")
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise StagevarError(f"manifest.json has a malformed engine entry {e!r} ({exc}); export "
                            f"again.") from None
    return point


def _vae_point(d: ModelDims, data: dict, aspect: str) -> dict:
    fh, fw = (int(x) for x in _scales(data, aspect)[-1])
    f = 2 if d.patchify else 1  # Infinity-8B: a token is a 2x2 block of latent pixels
    return {"n": d.batch, "fh": fh * f, "fw": fw * f}


def _aspects(data: dict) -> list[str]:
    return list(data.get("aspects") or data.get("schedules") or [])


def _scales(data: dict, aspect: str) -> list:
    try:
        return data["schedules"][aspect]["scales"]
    except (KeyError, TypeError):
        raise StagevarError(f"manifest.json has no schedule for aspect {aspect!r}; export "
                            f"again.") from None


# --------------------------------------------------------------------------------------------
# consistency with the exported ONNX


def _input_specs(data: dict, graph: str, names: tuple[str, ...]) -> dict[str, dict]:
    try:
        inputs = {i["name"]: i for i in data["graphs"][graph]["inputs"]}
    except (KeyError, TypeError):
        raise StagevarError(f"manifest.json has no input list for graph '{graph}'; export "
                            f"again.") from None
    if set(inputs) != set(names):
        missing, extra = sorted(set(names) - set(inputs)), sorted(set(inputs) - set(names))
        raise StagevarError(f"The {graph} graph of this export lacks input(s) "
                            f"{', '.join(missing) or '-'} and has {', '.join(extra) or '-'} instead "
                            f"(made by another stagevar version); export again with this stagevar.")
    return inputs


def _check_against_spec(graph: str, name: str, mmm: tuple[Shape, Shape, Shape], spec: dict,
                        symbols: tuple[dict, dict, dict]) -> None:
    """Our shapes must agree with the ONNX shape: same rank, equal static dims, and one value
    per named dim within each of min/opt/max (every `n` equal: TensorRT asserts that too)."""
    dims = spec["shape"]
    for shape, bound in zip(mmm, symbols):
        ok = len(shape) == len(dims) and all(isinstance(s, str) or s == x for s, x in zip(dims, shape))
        for sym, x in zip(dims, shape):
            if ok and isinstance(sym, str) and sym.isidentifier():
                ok = bound.setdefault(sym, x) == x
        if not ok or min(shape, default=0) < 0:
            raise StagevarError(f"Input {name} of the {graph} graph has shape {dims} in the "
                                f"export, which does not fit {list(shape)} from its manifest; "
                                f"export again with this stagevar.")
