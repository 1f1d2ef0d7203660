"""`stagevar-export calibrate DIR` for VAR exports: measure the model's StageVAR rank table.

The family-independent core (exporter/rank_calibration.py, centred energy ranks of the chunk
input tokens) fed by the VAR reference sampler: each class label is generated with the
`cfg-off` plan (CFG scales as usual, the three fidelity scales on the null rows with all tokens),
and the input of every block chunk at the fidelity scales is recorded. No released table exists
for VAR, so this is the only source of its stagevar / stagevar-full ranks.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from stagevar.runtime.errors import StagevarError
from stagevar.runtime.manifest import load_manifest, write_manifest
from stagevar.runtime.manifest_rank_table import calibrated_entry
from stagevar.runtime.rank_table import CALIBRATED, TABLE_FORMAT, table_from_json, table_to_json
from stagevar.runtime.stage_plan import PLAN_PRESETS, fidelity_scales
from stagevar.runtime.var_plans import make_var_plan
from stagevar.runtime.var_sampling import draw_uniforms

from ..rank_calibration import RankAccumulator
from .bundle import VarBundle
from .config import get_var_preset
from .sampler import VarReferenceSampler

# 16 classes spread over ImageNet (every 63rd index from 3): birds, dogs, objects, food, scenes.
DEFAULT_CLASSES = tuple(range(3, 1000, 63))
CALIBRATION_PLAN = "cfg-off"
METHOD = ("per fidelity scale and block chunk: smallest rank r whose centred squared singular values of the chunk's "
          "input tokens (M x C, null rows, cfg-off generation) reach alpha of their sum; ratio r/M averaged over "
          "the class labels")
Say = Callable[[str], None]


def parse_classes(text: str | None) -> tuple[int, ...]:
    if text is None:
        return DEFAULT_CLASSES
    try:
        labels = tuple(int(c) for c in str(text).split(",") if c.strip())
    except ValueError:
        raise StagevarError(f"--classes {text!r} is not a comma-separated list of class indices such as 1,207,360.") from None
    if not labels or any(not 0 <= c < 1000 for c in labels):
        raise StagevarError(f"--classes must list ImageNet class indices between 0 and 999, got {text!r}.")
    return labels


def rebuild_var_bundle(manifest, weights=None, vae=None, say: Say = print) -> VarBundle:
    """The torch model of a VAR export: its random-init seed, or its checkpoints (sha256 checked)."""
    model = manifest.model
    preset = get_var_preset(model["preset"])
    provenance = model.get("weights", {})
    if "random_init" in provenance:
        if weights or vae:
            raise StagevarError(f"Export {manifest.root} has random weights; drop --weights/--vae.")
        return VarBundle.random(preset, seed=int(provenance["random_init"]))
    recorded = model.get("checkpoint_paths", {}) or {}
    paths = {"weights": weights or recorded.get("weights"), "vae": vae or recorded.get("vae")}
    missing = [f"--{k}" for k, v in paths.items() if not v or not Path(v).exists()]
    if missing:
        raise StagevarError(f"Calibrating {manifest.root} needs the checkpoints it was exported from; pass "
                            f"{' and '.join(missing)}.")
    from ..checkpoint_io import sha256_file

    for key, path in paths.items():
        say(f"checking {key} checkpoint {path} against the export's sha256")
        if provenance.get(key) is not None and sha256_file(path) != provenance[key]:
            raise StagevarError(f"--{key} {path} is not the checkpoint {manifest.root} was exported from "
                                f"(sha256 differs); pass the same file.")
    return VarBundle.from_checkpoints(preset, paths["weights"], paths["vae"])


def measure_var_table(bundle: VarBundle, labels: Sequence[int], alphas: Sequence[str], seed: int,
                      batch: int = 4, say: Say = print) -> dict[str, list[list[float]]]:
    cfg = bundle.preset.var
    fid = fidelity_scales(cfg.num_scales)
    acc = RankAccumulator([float(a) for a in alphas], len(fid), cfg.block_chunks)
    modes = make_var_plan(CALIBRATION_PLAN, cfg.patch_nums, cfg.block_chunks).modes
    sampler = VarReferenceSampler(bundle.var, bundle.vae)
    sampler.vae = _NoDecode(bundle.vae)

    def hook(si, c, x):
        if si in fid:
            acc.add(fid.index(si), c, x.detach().float().numpy())

    t0 = time.perf_counter()
    for start in range(0, len(labels), batch):
        group = list(labels[start:start + batch])
        uniforms = draw_uniforms([seed + start + i for i in range(len(group))], cfg.patch_nums)
        sampler.generate(group, uniforms, cfg=bundle.preset.default_cfg, top_k=bundle.preset.default_top_k,
                         top_p=bundle.preset.default_top_p, modes=modes, chunk_input_hook=hook)
        done = start + len(group)
        say(f"calibrate: {done}/{len(labels)} classes, {time.perf_counter() - t0:.1f} s")
    measured = acc.ratios()
    return {a: measured[float(a)] for a in alphas}


class _NoDecode:
    """The VQVAE without the image decode: calibration needs the transformer and the glue only."""

    def __init__(self, vae) -> None:
        self._vae = vae

    def __getattr__(self, name):
        return getattr(self._vae, name)

    def decode(self, f_hat):
        return torch.zeros(f_hat.shape[0], 3, 1, 1)


def calibrate_var_export(root, *, classes=None, alphas: Sequence[str] = ("0.96",), seed: int = 0, weights=None,
                         vae=None, say: Say = print) -> dict:
    """Measure the table, write rank_table.json, record it in the manifest; return the table JSON.
    The old manifest stays valid until the new one replaces it atomically."""
    from .export import scale_entries
    from ..infinity.calibrate import _write_json_atomic
    from stagevar.runtime.manifest_rank_table import TABLE_FILE

    labels = parse_classes(classes)
    manifest = load_manifest(root, verify="full")
    bundle = rebuild_var_bundle(manifest, weights, vae, say)
    cfg = bundle.preset.var
    t0 = time.perf_counter()
    ratios = measure_var_table(bundle, labels, alphas, seed, say=say)
    fid = fidelity_scales(cfg.num_scales)
    provenance = {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "method": METHOD, "plan": CALIBRATION_PLAN, "alphas": list(alphas), "prompt_source": "class labels",
        "num_prompts": len(labels), "prompts_sha256": hashlib.sha256(",".join(map(str, labels)).encode()).hexdigest(),
        "classes": list(labels), "seeds": [seed, seed + len(labels) - 1], "cfg": bundle.preset.default_cfg,
        "top_k": bundle.preset.default_top_k, "top_p": bundle.preset.default_top_p,
        "fidelity_scales": [[cfg.patch_nums[k]] * 2 for k in fid],
        "model": {"config_hash": cfg.config_hash(), "weights": manifest.model.get("weights")},
        "seconds": round(time.perf_counter() - t0, 1),
    }
    table_json = {"format": TABLE_FORMAT, "source": CALIBRATED, "ratios": ratios, "provenance": provenance}
    table = table_from_json(table_json, cfg.block_chunks, "the measurement")
    table_json = table_to_json(table)
    data = {k: v for k, v in manifest.data.items() if k not in ("files", "schema_version")}
    alpha = table.alphas[0]
    plans = [p for p in PLAN_PRESETS if _runs(p, cfg, table, alpha)]
    _write_json_atomic(Path(manifest.root) / TABLE_FILE, table_json)
    data.update({"rank_table": calibrated_entry(table_json), "alpha": alpha, "plans": plans,
                 "engines": scale_entries(bundle, int(data.get("batch", 1)), table, alpha)})
    write_manifest(manifest.root, data)
    return table_json


def _runs(plan: str, cfg, table, alpha) -> bool:
    try:
        make_var_plan(plan, cfg.patch_nums, cfg.block_chunks, table, alpha)
        return True
    except StagevarError:
        return False
