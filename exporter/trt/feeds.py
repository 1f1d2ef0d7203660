"""Inputs for the TensorRT-vs-ONNX Runtime check: one feed per graph profile, numpy only.

Values are in the ranges the pipeline feeds: token ids below the vocabulary size with masks of
ones then zeros, the scale's own scale_index and RoPE rows, codes that are sums of +-1/sqrt(d)
steps, real area-resize matrices, Gaussian projections with variance 1/r. One deliberate
deviation: the Gumbel noise of the fidelity graph is a random permutation spaced GUMBEL_SPACING
apart, so the top-r selection log(||x||^2) + g has no near-ties and cannot flip on a rounding
difference between the two backends (a flip moves a whole token and would swamp the
comparison); TopK, the scatter and the restore are exercised all the same.
"""

from __future__ import annotations

import numpy as np

from stagevar.runtime import graph_io as gio
from stagevar.runtime.resize import area_matrix
from stagevar.runtime.rope import rope_cos_sin
from stagevar.runtime.schedules import get_schedule

from .profiles import ModelDims, ProfileSpec

GUMBEL_SPACING = 64.0  # well above the spread of log(||x||^2) across the tokens of a scale
POINTS = ("min", "opt", "max")
_DTYPES = {"float32": np.float32, "float16": np.float16, "int64": np.int64, "int32": np.int32,
           "uint8": np.uint8, "bool": np.bool_, "float64": np.float64}


def make_feeds(data: dict, graph: str, profile: ProfileSpec, seed: int = 0,
               point: str = "opt") -> dict[str, np.ndarray]:
    """Every input of `graph` at the `point` ("min", "opt" or "max") shapes of `profile`."""
    if point not in POINTS:
        raise ValueError(f"point must be one of {POINTS}, not {point!r}")
    rng = np.random.default_rng(seed)
    if data.get("family") == "var":
        from .var_profiles import VarDims

        dims = VarDims.from_manifest(data)
    else:
        dims = ModelDims.from_manifest(data)
    specs = {i["name"]: i for i in data["graphs"][graph]["inputs"]}
    ranges = profile.shape_dict()
    shapes = {name: tuple(ranges[name][POINTS.index(point)]) if name in ranges else
              tuple(spec["shape"]) for name, spec in specs.items()}
    ctx = _Context(data, dims, graph, profile, shapes, rng)
    feeds = {}
    for name in specs:  # ONNX input order: deterministic draws for a seed
        value = ctx.value(name)
        want = _DTYPES[specs[name]["dtype"]]
        # np.array, not np.ascontiguousarray: the latter turns the 0-d scalars into shape (1,).
        feeds[name] = np.array(np.asarray(value).astype(want, copy=False).reshape(shapes[name]), order="C")
    return feeds


class _Context:
    """Per-feed state that several inputs share (text lengths, the engine entry)."""

    def __init__(self, data, dims: ModelDims, graph, profile, shapes, rng) -> None:
        self.data, self.dims, self.graph, self.shapes, self.rng = data, dims, graph, shapes, rng
        self.entry = data["engines"][profile.entry] if profile.entry is not None else None
        self.aspect = profile.aspect
        self._lengths: dict[int, np.ndarray] = {}

    def lengths(self, rows: int, t: int) -> np.ndarray:
        """Valid text tokens per row; row 0 is full, as the longest prompt of a request is."""
        if rows not in self._lengths:
            lengths = self.rng.integers(1, t + 1, size=rows)
            lengths[0] = t
            self._lengths[rows] = lengths
        return self._lengths[rows]

    def mask(self, rows: int, t: int) -> np.ndarray:
        return (np.arange(t)[None, :] < self.lengths(rows, t)[:, None]).astype(np.int64)

    def value(self, name: str):
        shape, rng = self.shapes[name], self.rng
        if name == "input_ids":
            vocab = int(self.data["model"]["text_encoder"]["vocab_size"])
            ids = rng.integers(1, vocab, size=shape)
            return np.where(self.mask(*shape) == 1, ids, 0)  # pad id 0 after the prompt
        if name == "attention_mask":
            return self.mask(*shape)
        if name == "text_features":
            return 0.2 * rng.standard_normal(shape)
        if name == "text_bias":  # 0 on a row's prompt tokens, -inf on its padding (text_key_bias)
            return np.where(self.mask(*shape) == 1, 0.0, -np.inf)
        if name == "scale_index":
            return np.array(self.entry["scale"], np.int64)
        if name == "labels":  # VAR class_cond: [cond; null] rows, the null class = num_classes
            n = shape[0] // 2
            return np.concatenate([rng.integers(0, self.dims.num_classes, size=n), np.full(n, self.dims.num_classes)])
        if name in ("tokens", "f_hat"):  # VAR: area-downsampled running sums of codebook vectors
            return 0.5 * rng.standard_normal(shape)
        if name == "codes":
            return self._codes(shape)
        if name in ("sos", "gss", "head_ss"):
            return 0.1 * rng.standard_normal(shape)
        if name in ("text_kv", "past_kv"):
            return 0.5 * rng.standard_normal(shape)
        if name in ("rope_cos", "rope_sin"):
            return self._rope(name)
        if name == "guidance" and self.data.get("family") == "var":  # the ramp t = cfg * si / (S - 1)
            t = float(self.data["model"].get("default_cfg", 1.5)) * self.entry["scale"] / (len(self.dims.patch_nums) - 1)
            return np.array([1.0 + t, -t] if self.entry["rows"] == 2 * self.entry["images"] else [1.0, 0.0])
        if name == "guidance":
            cfg = float(self.data["model"].get("default_cfg", 3.0))
            return np.array([cfg, 1.0 - cfg] if self.entry["rows"] == 2 * self.entry["images"] else [1.0, 0.0])
        if name == "tau":
            return np.array(float(self.data["model"].get("default_tau", 1.0)))
        if name == "cache":
            return rng.standard_normal(shape)
        if name in ("area_h", "area_w", "area"):
            return self._area(name)
        if name == "gumbel":
            chunks, rows, m = shape
            return np.stack([np.stack([rng.permutation(m) for _ in range(rows)]) for _ in range(chunks)]) * GUMBEL_SPACING
        if name.startswith("proj_"):
            return rng.standard_normal(shape) / np.sqrt(shape[-1])
        raise ValueError(f"no feed rule for input {name!r} of graph {self.graph}")

    def _codes(self, shape):
        """Running sums of k code maps of +-1/sqrt(code_dim): what the pipeline accumulates."""
        if self.graph == gio.VAE_DECODER:
            k = len(self.data["schedules"][self.aspect]["scales"])
        else:
            k = int(self.entry["scale"])
        if k == 0:
            return np.zeros(shape)  # scale 0 reads the SOS token; its codes are zeros
        steps = 2 * self.rng.binomial(k, 0.5, size=shape) - k
        return steps / np.sqrt(self.dims.code_dim)

    def _schedule(self):
        return get_schedule(self.aspect, self.data["resolution"])

    def _rope(self, name: str):
        schedule = self._schedule()
        cos, sin = rope_cos_sin(schedule, self.dims.head_dim)
        k = int(self.entry["scale"])
        start, count = schedule.offsets[k], schedule.token_counts[k]
        return (cos if name == "rope_cos" else sin)[start:start + count]

    def _area(self, name: str):
        if self.data.get("family") == "var":  # square scales, from the model's patch_nums
            scales = [(p, p) for p in self.dims.patch_nums]
        else:
            scales = self.data["schedules"][self.aspect]["scales"]
        k = int(self.entry["scale"])
        (ch, cw), (gh, gw) = scales[k - 1], scales[k]
        if name == "area_h":
            return area_matrix(ch, gh)
        if name == "area_w":
            return area_matrix(cw, gw)
        return np.kron(area_matrix(ch, gh), area_matrix(cw, gw))
