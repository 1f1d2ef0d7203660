"""`stagevar-export build`: TensorRT engines for an export, recorded in its manifest.

Engines go to ``DIR/engines/trt<ver>-sm<cc>/<graph>.plan`` with the timing cache beside them
(DESIGN.md section 6). Safety of an existing export comes first:
- the ONNX and weights files are hashed and must match the manifest before anything is built;
- the new folder is built as a hidden sibling inside ``engines/`` and renamed into place only when
  every plan is written (artifact_dir.staged_output), then manifest.json is rewritten atomically
  with the new digests; a failed or interrupted build leaves the previous folder and manifest;
- a plan whose cache key (runtime.engine_cache.engine_key) and file digest match the record is
  reused (hard-linked into the new folder) unless ``force``.
TensorRT itself is behind `toolchain.Toolchain`, so this module is tested with a fake one.
"""

from __future__ import annotations

import contextlib

import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from stagevar import __version__
from stagevar.runtime.engine_cache import BUILDS_KEY, ENGINES_DIR, engine_dir_name, engine_key, find_build, normalize_cc
from stagevar.runtime.errors import StagevarError
from stagevar.runtime.manifest import Manifest, load_manifest, sha256_file, write_manifest

from ..artifact_dir import staged_output
from ..attention_form import DECOMPOSED, FUSED, TRT_MIN_FOR_FUSED
from ..progress import PhaseProgress
from .profiles import ProfileSpec, all_profiles, engine_graphs
from .toolchain import PlanRequest, Toolchain, load_toolchain

TIMING_CACHE = "timing.cache"
PLUGIN_DOMAINS = ("stagevar",)  # custom ONNX domains whose nodes a plugin may implement
# Part of every cache key: bump when the way plans are built changes beyond the recorded flags.
RECIPE = {"builder": "polygraphy", "strongly_typed": True, "tf32": False, "recipe": 1}
_PHASES_PER_GRAPH = 3  # parse, build, serialize


@dataclass(frozen=True)
class BuildOptions:
    """What `stagevar-export build` was asked for."""

    optimization_level: int = 3
    workspace_bytes: int | None = None
    plugins: Path | None = None
    timing_cache: Path | None = None
    force: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.optimization_level, bool) or not 0 <= self.optimization_level <= 5:
            raise StagevarError(f"--opt-level must be 0 to 5, not {self.optimization_level}.")
        if self.workspace_bytes is not None and self.workspace_bytes <= 0:
            raise StagevarError("--workspace-gib must be positive.")
        if self.plugins is not None and not Path(self.plugins).is_file():
            raise StagevarError(f"--plugins {self.plugins} is not a file; pass the built "
                                f"libstagevar_trt_plugin.so.")

    def flags(self) -> dict:
        """The manifest's record of the build flags (also part of every key)."""
        return {"optimization_level": self.optimization_level, "workspace_bytes": self.workspace_bytes,
                "strongly_typed": True}


@dataclass
class BuildResult:
    record: dict
    built: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    changed: bool = True


def preflight(root: str | os.PathLike) -> tuple[Manifest, dict[str, list[ProfileSpec]]]:
    """The export and its profiles, or one sentence, before any TensorRT work.

    verify=False: the engines may be stale or half-replaced; build_engines hashes the sources.
    """
    manifest = load_manifest(root, verify=False)
    return manifest, all_profiles(manifest.data)


def build_engines(root: str | os.PathLike, options: BuildOptions, toolchain: Toolchain | None = None,
                  stream=None) -> BuildResult:
    """Build (or reuse) the engines of every graph and record them in manifest.json."""
    root = Path(root)
    stream = stream or sys.stderr
    manifest, profiles = preflight(root)
    data = manifest.data
    toolchain = toolchain or load_toolchain(root)
    gpu = toolchain.gpu()
    version, cc = toolchain.trt_version, normalize_cc(gpu.compute_capability)
    check_attention_support(data, version, root)
    plugin = _plugin_entry(options.plugins)
    if options.plugins is not None:
        toolchain.load_plugins(options.plugins)
    graph_names = engine_graphs(data)  # Infinity's five graphs, or VAR's (runtime/var_graph_io.py)
    sources = _verify_sources(manifest, graph_names)
    rel_dir = f"{ENGINES_DIR}/{engine_dir_name(version, cc)}"
    previous = find_build(data.get(BUILDS_KEY) or [], version, cc)
    plugin_sha = plugin["sha256"] if plugin else None

    graphs, reuse = {}, {}
    for graph in graph_names:
        onnx_sha, weights_sha = sources[graph]
        specs = profiles[graph]
        key = engine_key(onnx_sha, version, cc, {**options.flags(), **RECIPE, "profiles": [p.to_json() for p in specs]},
                         plugin_sha, weights_sha)
        graphs[graph] = {"plan": f"{rel_dir}/{graph}.plan", "onnx_sha256": onnx_sha, "weights_sha256": weights_sha,
                         "key": key, "profiles": [p.to_json() for p in specs]}
        old = _reusable(manifest, previous, graph, key) if not options.force else None
        if old is not None:
            reuse[graph] = old
    record = {
        "dir": rel_dir, "tensorrt": version, "compute_capability": cc, "device_name": gpu.name,
        "flags": options.flags(), "plugins": plugin, "timing_cache": f"{rel_dir}/{TIMING_CACHE}",
        "graphs": graphs, "built_seconds": {}, "stagevar": __version__,
    }
    result = BuildResult(record)
    if (previous is not None and len(reuse) == len(graph_names) and set(previous.get("graphs") or {}) == set(graph_names)
            and _same_build(previous, record)):
        for graph in graph_names:
            print(f"{graph}: up to date ({previous['graphs'][graph]['plan']})", file=stream)
        result.record, result.reused, result.changed = previous, list(graph_names), False
        return result

    to_build = [g for g in graph_names if g not in reuse]
    progress = PhaseProgress(_PHASES_PER_GRAPH * len(to_build), stream=stream)
    engines_root = root / ENGINES_DIR
    created = not engines_root.exists()
    engines_root.mkdir(exist_ok=True)
    try:
        with staged_output(root / rel_dir, force=True) as stage:
            cache = stage / TIMING_CACHE
            _seed_timing_cache(cache, options.timing_cache, root / rel_dir / TIMING_CACHE)
            if options.plugins is not None:
                # Beside the plans, so the export is self-contained: the runtime's TensorRT backend
                # loads <dir>/<plugins.file> (after checking its sha256) when no path is given.
                shutil.copyfile(options.plugins, stage / plugin["file"])
            for graph in graph_names:
                plan_path = stage / f"{graph}.plan"
                if graph in reuse:
                    _link_or_copy(reuse[graph][0], plan_path)
                    graphs[graph]["plugin_layers"] = reuse[graph][1].get("plugin_layers", 0)
                    record["built_seconds"][graph] = (previous.get("built_seconds") or {}).get(graph)
                    result.reused.append(graph)
                    print(f"{graph}: reused (key unchanged)", file=stream)
                    continue
                source = manifest.graph_path(graph)
                custom, _ = _custom_nodes(source)
                with _parse_source(source, plugins=options.plugins is not None and custom > 0) as onnx_path:
                    request = PlanRequest(graph, onnx_path, plan_path, tuple(profiles[graph]),
                                          options.optimization_level, options.workspace_bytes, cache,
                                          custom_nodes=custom)
                    done = toolchain.build_plan(request, progress.phase)
                _check_plugin_use(request, done.plugin_layers, options.plugins)
                graphs[graph]["plugin_layers"] = done.plugin_layers
                record["built_seconds"][graph] = round(done.seconds, 3)
                result.built.append(graph)
            progress.close()
            for lock in stage.glob("*.lock"):  # Polygraphy's timing-cache lock files
                lock.unlink()
            if not cache.is_file():
                record["timing_cache"] = None
            elif options.timing_cache is not None:
                _copy_atomic(cache, options.timing_cache)
    except BaseException:
        if created and not any(engines_root.iterdir()):
            engines_root.rmdir()  # a first build that failed leaves the export as it was
        raise
    finally:
        progress.close()
    write_manifest(root, _with_record(data, record))
    return result


def check_attention_support(data: dict, trt_version: str, root: Path) -> None:
    """Refuse, before any work, fused `Attention` graphs on a TensorRT whose parser lacks the op.

    Exports from before the attention forms existed have no "attention" record: decomposed.
    """
    form = (data.get("attention") or {}).get("form", DECOMPOSED)
    parts = tuple(int(p) for p in (trt_version.split(".") + ["0", "0"])[:2] if p.isdigit())
    if form == FUSED and parts < TRT_MIN_FOR_FUSED:
        need = ".".join(map(str, TRT_MIN_FOR_FUSED))
        raise StagevarError(f"The graphs in {root} carry fused ONNX Attention nodes, which TensorRT {trt_version} "
                            f"cannot parse (it needs {need} or newer); re-export with "
                            f"`stagevar-export --attention decomposed` for this TensorRT.")


def record_check(root: str | os.PathLike, record: dict, ok: bool, report_rel: str) -> None:
    """Store the accuracy check's verdict in the build record and rewrite manifest.json (which
    also lists the fresh report with its digest)."""
    root = Path(root)
    data = load_manifest(root, verify=False).data
    updated = dict(record, check={"ok": bool(ok), "report": report_rel})
    write_manifest(root, _with_record(data, updated))


# --------------------------------------------------------------------------------------------
# internals


def _plugin_entry(path: Path | None) -> dict | None:
    if path is None:
        return None
    return {"file": Path(path).name, "sha256": sha256_file(path)}


def _verify_sources(manifest: Manifest, graphs) -> dict[str, tuple[str, str | None]]:
    """(onnx sha256, weights sha256) per graph, after checking the files match the manifest."""
    files, seen, out = manifest.files, {}, {}
    for graph in graphs:
        manifest.graph_path(graph)  # one sentence for a missing or malformed graph entry
        entry = manifest.graphs[graph]
        digests = []
        for rel in (entry["path"], entry.get("weights")):
            if rel is None:
                digests.append(None)
                continue
            if rel not in files:
                raise StagevarError(f"File {rel} of graph {graph} is not listed in manifest.json in "
                                    f"{manifest.root}; export again.")
            if rel not in seen:
                path = manifest.root / rel
                if not path.is_file() or sha256_file(path) != files[rel]["sha256"]:
                    raise StagevarError(f"File {rel} in {manifest.root} does not match manifest.json "
                                        f"(missing, corrupted or modified); export again.")
                seen[rel] = files[rel]["sha256"]
            digests.append(seen[rel])
        out[graph] = (digests[0], digests[1])
    return out


def _reusable(manifest: Manifest, previous: dict | None, graph: str, key: str):
    """(plan path, old graph record) when the recorded plan has this key and is intact."""
    if previous is None:
        return None
    old = (previous.get("graphs") or {}).get(graph)
    if not isinstance(old, dict) or old.get("key") != key:
        return None
    rel = old.get("plan")
    listed = manifest.files.get(rel) if isinstance(rel, str) else None
    path = manifest.root / rel if isinstance(rel, str) else None
    if listed is None or path is None or not path.is_file() or sha256_file(path) != listed["sha256"]:
        return None  # e.g. a build interrupted between the folder swap and the manifest
    return path, old


def _same_build(previous: dict, record: dict) -> bool:
    keys = ("dir", "flags", "plugins")
    return all(previous.get(k) == record.get(k) for k in keys)


@contextlib.contextmanager
def _parse_source(onnx_path: Path, plugins: bool):
    """The ONNX file TensorRT parses: the export's own, or with --plugins a variant whose
    stagevar nodes call the plugin by name and carry no local function (`plugin_variant`), so
    the parser cannot fall back to the function body. The variant sits beside the original
    (external weights resolve relative to it) under a hidden name, and is removed afterwards."""
    for stale in onnx_path.parent.glob(f".{onnx_path.stem}.trt-plugins.*.onnx"):
        stale.unlink()  # left by a killed build
    if not plugins:
        yield onnx_path
        return
    import onnx

    from stagevar.exporter.onnx_local_functions import plugin_variant

    model = onnx.load(str(onnx_path), load_external_data=False)
    plugin_variant(model)
    variant = onnx_path.parent / f".{onnx_path.stem}.trt-plugins.{os.getpid()}.onnx"
    try:
        onnx.save_model(model, str(variant))
        yield variant
    finally:
        variant.unlink(missing_ok=True)


def _custom_nodes(onnx_path: Path) -> tuple[int, bool]:
    """(custom-domain nodes in the graph, whether the parser needs ENABLE_PLUGIN_OVERRIDE).

    Recent ONNX parsers import a node that has a model-local function through the function body
    unless the node carries a `plugin_namespace` attribute or the override flag is set.
    """
    try:
        import onnx
    except ImportError:
        return 0, False  # cannot inspect; the parser's default behaviour applies
    model = onnx.load(str(onnx_path), load_external_data=False)
    nodes = [n for n in model.graph.node if n.domain in PLUGIN_DOMAINS]
    tagged = all(any(a.name == "plugin_namespace" for a in n.attribute) for n in nodes)
    return len(nodes), bool(nodes) and not tagged


def _check_plugin_use(request: PlanRequest, plugin_layers: int, plugins: Path | None) -> None:
    if plugins is None or request.custom_nodes == 0 or plugin_layers >= request.custom_nodes:
        return
    raise StagevarError(f"--plugins {plugins} was loaded, but TensorRT imported only {plugin_layers} of "
                        f"the {request.custom_nodes} custom nodes of the {request.graph} graph as "
                        f"plugins (the parser looks a plugin up by the node's op type, version 1, "
                        f"namespace \"\"); rebuild the plugin library for this TensorRT or drop "
                        f"--plugins to use the nodes' ONNX function bodies.")


def _seed_timing_cache(cache: Path, user: Path | None, previous: Path) -> None:
    source = user if user is not None and Path(user).is_file() else previous
    if source.is_file():
        shutil.copyfile(source, cache)


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)  # plans are GBs: share the inode when the filesystem allows
    except OSError:
        shutil.copyfile(src, dst)


def _copy_atomic(src: Path, dst: Path) -> None:
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)


def _with_record(data: dict, record: dict) -> dict:
    """The manifest content (without the parts write_manifest adds) with `record` upserted."""
    content = {k: v for k, v in data.items() if k not in ("files", "schema_version")}
    builds = [b for b in (content.get(BUILDS_KEY) or [])
              if not (isinstance(b, dict) and b.get("dir") == record["dir"])]
    content[BUILDS_KEY] = builds + [record]
    return content
