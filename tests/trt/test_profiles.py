"""exporter/trt/profiles.py: the optimisation profiles cover exactly what the pipeline binds.

The ONNX Runtime pipeline runs every plan preset on both aspects of the tiny export with a spy
on its backend; every input shape set it binds must lie inside a profile of that graph, and for
step/fidelity inside the profile of the very engine entry (scale, aspect, rows) that runs it.
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from stagevar.exporter.trt.profiles import TEXT_BUCKETS, TEXT_OPT_TOKENS, ModelDims, all_profiles, graph_profiles
from stagevar.runtime import graph_io as gio
from stagevar.runtime.errors import StagevarError
from stagevar.runtime.manifest import load_manifest
from stagevar.runtime.pipeline import Pipeline
from stagevar.runtime.stage_plan import PLAN_PRESETS

LONG_PROMPT = " ".join(["a very long prompt about a red apple on a wooden table"] * 20)


@pytest.fixture(scope="module")
def manifest(tiny_artifacts):
    return load_manifest(tiny_artifacts, verify=False)


@pytest.fixture(scope="module")
def bound(tiny_artifacts):
    """(graph, {input: shape}, {input: value of scalars}) for every graph run of every preset."""
    pipe = Pipeline.from_dir(tiny_artifacts, verify=False)
    backend, seen = pipe.backend, []
    run_bound, run_plain = backend.run_bound, backend.run_plain

    def record(graph, inputs):
        shapes = {n: tuple(int(d) for d in np.shape(v) if True) if not hasattr(v, "ptr") else tuple(v.shape)
                  for n, v in inputs.items()}
        scale = int(np.asarray(inputs["scale_index"])) if "scale_index" in inputs else None
        seen.append((graph, shapes, scale))

    def spy_bound(graph, inputs, outputs):
        record(graph, inputs)
        return run_bound(graph, inputs, outputs)

    def spy_plain(graph, feeds):
        record(graph, feeds)
        return run_plain(graph, feeds)

    backend.run_bound, backend.run_plain = spy_bound, spy_plain
    # Together these run every engine entry of PLAN_PRESETS: exact (all CFG), stagevar-full
    # (LOWRANK after CFG and after LOWRANK), cfg-off (UNCOND); stagevar's scales are a subset.
    assert set(PLAN_PRESETS) == {"exact", "stagevar", "stagevar-full", "cfg-off"}
    for aspect in pipe.manifest.data["aspects"]:
        for plan in ("exact", "stagevar-full", "cfg-off"):
            seen.append(("request", {"aspect": aspect, "plan": plan}, None))
            pipe("a cat", plan=plan, aspect=aspect, seed=1, output_type="np")
    # The longest text: the 0.06M schedule is a prefix of the 1M one, so its CFG scales are
    # 1M engine entries too (and cheap).
    seen.append(("request", {"aspect": "1:1", "plan": "exact", "resolution": "0.06M"}, None))
    with pytest.warns(UserWarning, match="truncated"):
        pipe(LONG_PROMPT, plan="exact", aspect="1:1", resolution="0.06M", seed=2, output_type="np")
    return seen


def test_every_graph_gets_the_profiles_the_design_asks_for(manifest):
    data = manifest.data
    profiles = all_profiles(data)
    assert list(profiles) == list(gio.GRAPHS)
    engines, top = data["engines"], data["tokenizer"]["max_length"]
    shared = 0
    for graph in (gio.STEP, gio.FIDELITY):
        # Every engine entry of the graph is served by exactly one profile, in manifest order of
        # first use, and no two profiles have the same shapes (issue 15, defect 6: entries of
        # equal shapes, as the first scales of every aspect, used to get a profile each).
        served = [i for p in profiles[graph] for i in p.entries]
        assert sorted(served) == [i for i, e in enumerate(engines) if e["graph"] == graph]
        assert [p.entry for p in profiles[graph]] == [p.entries[0] for p in profiles[graph]]
        assert len({p.shapes for p in profiles[graph]}) == len(profiles[graph])
        shared += len(served) - len(profiles[graph])
        for p in profiles[graph]:
            assert p.aspect == engines[p.entry]["aspect"]
            for i in p.entries:
                e = engines[i]
                assert p.contains(_entry_shapes(data, graph, i))
                for name, (lo, opt, hi) in p.shapes:  # the text length t is the only range
                    if name == "text_kv":
                        assert (lo[4], hi[4]) == (1, top) and lo[:4] == hi[:4] and lo[5:] == hi[5:]
                    elif name == "text_bias":
                        assert lo == (e["rows"], 1) and hi == (e["rows"], top)
                    else:
                        assert lo == opt == hi, (graph, name)
    assert shared > 0  # the tiny export's 1:1 and 2:1 schedules share their first scales
    assert [p.aspect for p in profiles[gio.VAE_DECODER]] == data["aspects"]
    for graph in (gio.TEXT_ENCODER, gio.TEXT_COND):
        # One exact profile per padded text length (issue 15, defect 5), the longest included.
        lengths = [p.shape_dict()["attention_mask"][0][1] for p in profiles[graph]]
        assert lengths == sorted({b for b in TEXT_BUCKETS if b < top} | {top})
        for p in profiles[graph]:
            lo, opt, hi = p.shape_dict()["attention_mask"]
            assert lo == opt == hi and lo[0] == data["batch"]


def _entry_shapes(data, graph, index):
    """Input shapes of engine entry `index` at the shortest text, from graph_profiles' rules
    applied to that entry alone (a one-entry manifest)."""
    one = dict(data, engines=[data["engines"][index]])
    (p,) = graph_profiles(one, graph)
    return {name: mmm[0] for name, mmm in p.shapes}


def test_fidelity_profiles_follow_the_graph_io_contract(manifest):
    data = manifest.data
    dims = ModelDims.from_manifest(data)
    for p in graph_profiles(data, gio.FIDELITY):
        e = data["engines"][p.entry]
        shapes = {n: mmm[1] for n, mmm in p.shapes}
        (ch, cw), (gh, gw) = data["schedules"][e["aspect"]]["scales"][e["scale"] - 1], e["hw"]
        assert shapes["cache"] == (dims.block_chunks, e["images"], ch * cw, dims.embed_dim)
        if "area_h" in gio.fidelity_inputs(dims.block_chunks):
            assert shapes["area_h"] == (gh, ch) and shapes["area_w"] == (gw, cw)
        assert [shapes[f"proj_{c}"][2] for c in range(dims.block_chunks)] == e["ranks"]
        assert shapes["past_kv"][0] == e["past_tokens"] and shapes["codes"][1] == e["tokens"]


def test_every_shape_the_pipeline_binds_lies_in_its_profile(manifest, bound):
    data = manifest.data
    profiles = all_profiles(data)
    specs = {g: {i["name"]: i["shape"] for i in data["graphs"][g]["inputs"]} for g in gio.GRAPHS}
    request, runs = None, {g: 0 for g in gio.GRAPHS}
    for graph, shapes, scale in bound:
        if graph == "request":
            request = shapes
            continue
        if graph == gio.VAE_DECODER and request.get("resolution"):
            continue  # the 0.06M image is not an export resolution; its scales are
        runs[graph] += 1
        assert set(shapes) == set(specs[graph])
        for name, shape in shapes.items():  # static inputs: exactly the exported shape
            if not any(isinstance(d, str) for d in specs[graph][name]):
                assert list(shape) == specs[graph][name], (graph, name)
        if graph in (gio.TEXT_ENCODER, gio.TEXT_COND):  # the trt backend pads t to a bucket
            t = shapes["attention_mask"][1]
            padded = min(b for b in ModelDims.from_manifest(data).text_buckets if b >= t)
            shapes = {n: (*s[:1], padded, *s[2:]) for n, s in shapes.items()}
        matching = [p for p in profiles[graph] if p.contains(shapes)]
        assert matching, (graph, request, shapes)
        if graph in (gio.STEP, gio.FIDELITY):
            entries = [data["engines"][i] for p in matching for i in p.entries]
            assert any(e["scale"] == scale and e["aspect"] == request["aspect"] and e["graph"] == graph
                       for e in entries), (graph, request, scale)
        if graph == gio.VAE_DECODER:
            assert [p.aspect for p in matching] == [request["aspect"]]
    assert all(runs.values()), runs
    # The long prompt reached the longest text the profiles allow.
    top = data["tokenizer"]["max_length"]
    assert any(g == gio.TEXT_ENCODER and s["input_ids"][1] == top for g, s, _ in bound)


def test_an_export_of_another_contract_is_refused_in_one_sentence(manifest):
    data = copy.deepcopy(manifest.data)
    inputs = data["graphs"][gio.FIDELITY]["inputs"]
    inputs[:] = [i for i in inputs if i["name"] not in ("area_h", "area_w")] + \
                [{"name": "area", "dtype": "float32", "shape": ["m", "mc"]}]
    with pytest.raises(StagevarError) as info:
        graph_profiles(data, gio.FIDELITY)
    assert "export again" in str(info.value) and "\n" not in str(info.value)


def test_shapes_that_disagree_with_the_onnx_are_refused(manifest):
    data = copy.deepcopy(manifest.data)
    data["model"]["config"]["embed_dim"] += 1  # the manifest no longer describes the graph
    with pytest.raises(StagevarError, match="does not fit"):
        graph_profiles(data, gio.STEP)


def test_profiles_serialise_to_the_manifest_form(manifest):
    p = graph_profiles(manifest.data, gio.VAE_DECODER)[0]
    j = p.to_json()
    assert json.loads(json.dumps(j)) == j
    assert set(j) == {"entry", "aspect", "entries", "shapes"} and j["shapes"]["codes"][0] == list(p.shape_dict()["codes"][0])
