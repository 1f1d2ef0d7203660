"""The ONNX Runtime pipeline: parity with the eager reference, determinism, batching, the K/V
cache contract, torch-free use, and one-sentence errors.

The infinity-tiny export (1:1 and 2:1, fp32) is the session's `tiny_artifacts` (conftest.py);
the reference sampler runs the same random weights (`tiny_bundle`) in torch.
"""

import hashlib
import json
import shutil
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest
import torch

from stagevar.exporter.infinity.sampler import ReferenceSampler
from stagevar.runtime.errors import StagevarError
from stagevar.runtime.ort_backend import KVCache
from stagevar.runtime.noise import draw_batch_noise
from stagevar.runtime.pipeline import Pipeline, PipelineOutput
from stagevar.runtime.sampling import apply_top_p, prob_bit0
from stagevar.runtime.schedules import get_schedule
from stagevar.runtime.stage_plan import PLAN_PRESETS, Mode, make_plan

PROMPT = "a photo of a cat"


@pytest.fixture(scope="module")
def bundle(tiny_bundle):
    return tiny_bundle


@pytest.fixture(scope="module")
def artifacts(tiny_artifacts):
    """Read-only: tests that damage an export work on a copy."""
    return tiny_artifacts


@pytest.fixture(scope="module")
def reference(bundle):
    return ReferenceSampler(bundle)


@pytest.fixture(scope="module")
def pipe(artifacts):
    return Pipeline.from_dir(artifacts)


def _pixel_values(bundle, codes):
    """The reference's float pixel values (N, H, W, 3) before truncation to uint8."""
    with torch.no_grad():
        img = bundle.vae(torch.from_numpy(np.ascontiguousarray(codes)))
    return ((img + 1.0) / 2.0 * 255.0).permute(0, 2, 3, 1).numpy()


# A bit may differ only where the reference's sampling margin |u - p0| is below this: the two
# backends' logits differ by ~1e-5 (float summation order), so u can fall between their p0s.
_NEAR_TIE = 1e-4


def _near_tie_flips(mine, theirs, uniforms) -> int:
    """Number of differing bits; fails if any of them is not a near-tie of the reference."""
    flipped = mine.bits != theirs.bits
    if flipped.any():
        margin = np.abs(uniforms - apply_top_p(prob_bit0(theirs.logits)))[flipped]
        assert margin.max() < _NEAR_TIE, f"scale {mine.index}: a bit differs away from a sampling tie"
    return int(flipped.sum())


def assert_matches_reference(out: PipelineOutput, ref, bundle, noise):
    """Bits (and LOWRANK indices) of every scale and the decoded codes equal the reference's,
    except bits whose injected uniform lies within float rounding of p0 (`_near_tie_flips`);
    images equal except where torch's pixel value sits on an integer (uint8 truncation of a
    value within float rounding of the boundary in the VAE graph)."""
    assert [t.mode for t in out.intermediates] == [r.mode for r in ref.records]
    flips = 0
    for mine, theirs in zip(out.intermediates, ref.records):
        if theirs.mode is Mode.SKIP:
            assert mine.bits is None and theirs.bits is None
            continue
        flips += _near_tie_flips(mine, theirs, noise[mine.index].uniforms)
        scale = float(np.abs(theirs.logits).max())
        assert np.abs(mine.logits - theirs.logits).max() <= 1e-5 * max(scale, 1.0) or flips
        for a, b in zip(mine.indices, theirs.indices, strict=True):
            np.testing.assert_array_equal(a, b)
    if flips:
        # A tie bit changes one token's code: the images may differ around it, nowhere else.
        assert flips <= 3, f"{flips} sampling ties flipped"
        assert np.mean(out.codes != ref.codes) < 1e-3
        return
    np.testing.assert_array_equal(out.codes, ref.codes)
    diff = out.images.astype(np.int16) - ref.images.astype(np.int16)
    flipped = diff != 0
    if flipped.any():
        values = _pixel_values(bundle, ref.codes)[flipped]
        boundary = np.maximum(out.images, ref.images)[flipped].astype(np.float32)
        assert np.abs(diff).max() == 1
        assert np.abs(values - boundary).max() < 5e-3, "an image pixel differs away from a uint8 boundary"
        assert flipped.mean() < 1e-3


def _noise(pipe, seeds, plan, aspect, resolution):
    """The noise a seeded run draws (what both the pipeline and the reference use)."""
    schedule = get_schedule(aspect, resolution)
    plan = make_plan(plan, schedule, num_chunks=pipe.spec.block_chunks)
    return draw_batch_noise(seeds, plan, schedule, pipe.spec.bits_per_token)


def _logit_diffs(out, ref):
    """Max |logit difference| on step scales and on fidelity scales."""
    diffs = {"step": 0.0, "fidelity": 0.0}
    for mine, theirs in zip(out.intermediates, ref.records):
        if theirs.logits is not None:
            key = "fidelity" if theirs.mode is Mode.LOWRANK else "step"
            diffs[key] = max(diffs[key], float(np.abs(mine.logits - theirs.logits).max()))
    return diffs


# The 1M cases (13 scales up to 64x64) take about a minute each on 2 cores and check the same
# code paths as 0.25M at larger shapes: `slow`, run with -m slow.
CASES = [(plan, "0.25M") for plan in PLAN_PRESETS] + [
    pytest.param("exact", "1M", marks=pytest.mark.slow), pytest.param("stagevar", "1M", marks=pytest.mark.slow)]


@pytest.mark.parametrize("plan,resolution", CASES)
def test_pipeline_matches_reference_sampler(pipe, reference, bundle, plan, resolution):
    out = pipe(PROMPT, seed=3, plan=plan, resolution=resolution, output_type="np", return_intermediates=True)
    noise = _noise(pipe, [3], plan, "1:1", resolution)
    ref = reference.generate(PROMPT, seed=3, plan=plan, resolution=resolution, keep_intermediates=True, noise=noise)
    assert out.images.shape == ref.images.shape and out.images.dtype == np.uint8
    assert out.plan == plan and out.seeds == [3]
    assert_matches_reference(out, ref, bundle, noise)
    print(plan, resolution, _logit_diffs(out, ref))


def test_non_square_aspect_matches_reference_and_gives_a_wide_image(pipe, reference, bundle):
    out = pipe(PROMPT, seed=5, plan="stagevar", aspect="2:1", resolution="0.25M", return_intermediates=True,
               output_type="np")
    noise = _noise(pipe, [5], "stagevar", "2:1", "0.25M")
    ref = reference.generate(PROMPT, seed=5, plan="stagevar", aspect="2:1", resolution="0.25M",
                             keep_intermediates=True, noise=noise)
    assert_matches_reference(out, ref, bundle, noise)
    (image,) = pipe(PROMPT, seed=5, plan="stagevar", aspect="2:1", resolution="0.25M").images
    h, w = get_schedule("2:1", "0.25M").pixel_hw(patch=4)
    assert image.size == (w, h) and w == 2 * h and image.mode == "RGB"


def test_aspect_not_in_the_manifest_runs_on_ort(pipe, artifacts):
    assert "4:3" not in json.loads((artifacts / "manifest.json").read_text())["aspects"]
    out = pipe("a boat", seed=1, plan="stagevar", aspect="4:3", resolution="0.06M", output_type="np")
    assert out.images.shape[0] == 1 and out.images.shape[2] > out.images.shape[1]


def test_same_seed_twice_is_identical_and_another_seed_is_not(pipe):
    a = pipe("a red apple", seed=9, plan="stagevar", resolution="0.25M", output_type="np")
    b = pipe("a red apple", seed=9, plan="stagevar", resolution="0.25M", output_type="np")
    c = pipe("a red apple", seed=10, plan="stagevar", resolution="0.25M", output_type="np")
    np.testing.assert_array_equal(a.images, b.images)
    assert not np.array_equal(a.images, c.images)


def test_a_batch_equals_its_prompts_run_alone_with_consecutive_seeds(pipe):
    both = pipe(["a cat", "a dog"], seed=7, plan="stagevar-full", resolution="0.25M", output_type="np")
    cat = pipe("a cat", seed=7, plan="stagevar-full", resolution="0.25M", output_type="np")
    dog = pipe("a dog", seed=8, plan="stagevar-full", resolution="0.25M", output_type="np")
    assert both.seeds == [7, 8]
    np.testing.assert_array_equal(both.images, np.concatenate([cat.images, dog.images]))
    per_prompt = pipe("a cat", seed=7, plan="stagevar", resolution="0.06M", num_images_per_prompt=2,
                      output_type="np")
    explicit = pipe(["a cat", "a cat"], seed=[7, 8], plan="stagevar", resolution="0.06M", output_type="np")
    np.testing.assert_array_equal(per_prompt.images, explicit.images)


@pytest.mark.parametrize("plan,allocations", [("exact", 1), ("stagevar", 2), ("cfg-off", 2)])
def test_kv_cache_is_one_buffer_per_request_written_in_place(pipe, monkeypatch, plan, allocations):
    monkeypatch.setattr(KVCache, "debug_fill", np.nan)  # an unwritten slot would stay NaN
    backend = pipe.backend
    before = (backend.kv_allocations, backend.kv_slot_writes)
    pipe("a cat", seed=0, plan=plan, resolution="0.25M", num_images_per_prompt=2, output_type="np")
    schedule = get_schedule("1:1", "0.25M")
    modes = make_plan(plan, schedule).modes
    steps = [k for k, m in enumerate(modes) if m in (Mode.CFG, Mode.UNCOND)]
    cache = backend.last_kv_cache
    assert backend.kv_allocations - before[0] == cache.allocations == allocations
    assert backend.kv_slot_writes - before[1] == len(steps)
    # The slots of the step scales tile the buffer in token order, and every one was written.
    assert cache.writes == [(schedule.offsets[k], schedule.token_counts[k]) for k in steps]
    assert cache.length == cache.capacity == sum(schedule.token_counts[k] for k in steps)
    compacted = any(m not in (Mode.CFG, Mode.SKIP) for m in modes)
    assert cache.rows == (2 if compacted else 4)  # 2 images: [cond; null] rows, or null rows only
    assert not np.isnan(cache.buffer.numpy()).any()


class _BindingSpy:
    """An IOBinding that remembers the address each output was bound to."""

    def __init__(self, inner):
        self.inner, self.output_ptrs = inner, {}

    def bind_output(self, name, device, device_id, dtype, shape, ptr):
        self.output_ptrs[name] = ptr
        return self.inner.bind_output(name, device, device_id, dtype, shape, ptr)

    def __getattr__(self, name):
        return getattr(self.inner, name)


class _StepSessionSpy:
    """The step graph's session, recording for each run where ONNX Runtime wrote `new_kv` and
    what the cache looked like right after the run, before the pipeline's `commit`."""

    def __init__(self, inner, backend):
        self.inner, self.backend, self.runs = inner, backend, []

    def io_binding(self):
        return _BindingSpy(self.inner.io_binding())

    def run_with_iobinding(self, binding, *args):
        self.inner.run_with_iobinding(binding.inner, *args)
        binding.inner.synchronize_outputs()  # on CUDA: the writes are done before they are read
        index = list(binding.output_ptrs).index("new_kv")
        written = binding.inner.get_outputs()[index]  # the OrtValue ORT wrote new_kv into
        cache = self.backend.last_kv_cache
        count = written.shape()[0]
        slot_values = cache.buffer.numpy()[cache.length:cache.length + count]
        self.runs.append(dict(bound=binding.output_ptrs["new_kv"], written=written.data_ptr(),
                              slot=cache.buffer.ptr + cache.length * cache.buffer.row_bytes,
                              start=cache.length, count=count, slot_nan=bool(np.isnan(slot_values).any())))

    def __getattr__(self, name):
        return getattr(self.inner, name)


@pytest.mark.parametrize("ortvalues", [False, True], ids=["numpy", "ortvalue"])
def test_onnxruntime_writes_new_kv_into_the_cache_slot_itself(pipe, monkeypatch, ortvalues):
    """Bug guarded against: the step's new K/V bound to a scratch buffer and copied into the
    slot at `commit` (counters and the NaN fill cannot tell). The address the IO binding writes
    `new_kv` into must be the cache slot's, and the slot must hold the values as soon as the
    run returns, before `commit`; on both buffer kinds (numpy on CPU, OrtValue as on CUDA)."""
    monkeypatch.setattr(KVCache, "debug_fill", np.nan)
    monkeypatch.setattr(pipe.backend, "use_ortvalues", ortvalues)
    spy = _StepSessionSpy(pipe.backend.sessions["step"], pipe.backend)
    monkeypatch.setitem(pipe.backend.sessions, "step", spy)
    pipe("a cat", seed=0, plan="cfg-off", resolution="0.06M", num_images_per_prompt=2, output_type="np")
    schedule = get_schedule("1:1", "0.06M")
    assert [(r["start"], r["count"]) for r in spy.runs] == list(zip(schedule.offsets, schedule.token_counts))
    for run in spy.runs:
        assert run["bound"] == run["slot"] and run["written"] == run["slot"], run
        assert not run["slot_nan"], run


@pytest.mark.gpu
def test_on_a_cuda_gpu_new_kv_is_written_into_the_cache_slot_and_images_match_cpu(artifacts, monkeypatch):
    """The ORT CUDA path (onnxruntime-gpu, device="cuda"): the same slot-identity check as on CPU,
    on device OrtValues, and the CPU image. Runs with -m gpu on a GPU host; there a missing CUDA
    provider fails (it would otherwise hide the whole check). Images may differ where a bit's
    sampling margin is below the GPU's float rounding, so most pixels, not all, must agree."""
    import onnxruntime as ort

    assert "CUDAExecutionProvider" in ort.get_available_providers(), "install onnxruntime-gpu (stagevar[gpu])"
    gpu = Pipeline.from_dir(artifacts, device="cuda")
    monkeypatch.setattr(KVCache, "debug_fill", np.nan)
    spy = _StepSessionSpy(gpu.backend.sessions["step"], gpu.backend)
    monkeypatch.setitem(gpu.backend.sessions, "step", spy)
    out = gpu("a cat", seed=0, plan="cfg-off", resolution="0.06M", output_type="np")
    assert type(gpu.backend.last_kv_cache.buffer.owner).__name__ == "OrtValue"
    assert spy.runs and all(r["bound"] == r["slot"] == r["written"] and not r["slot_nan"] for r in spy.runs)
    cpu = Pipeline.from_dir(artifacts)("a cat", seed=0, plan="cfg-off", resolution="0.06M", output_type="np")
    assert out.images.shape == cpu.images.shape
    assert np.mean(out.images == cpu.images) > 0.9


def test_ortvalue_buffers_the_cuda_path_uses_give_the_same_image(pipe, monkeypatch):
    plain = pipe("a tree", seed=2, plan="stagevar-full", resolution="0.25M", output_type="np")
    monkeypatch.setattr(pipe.backend, "use_ortvalues", True)
    resident = pipe("a tree", seed=2, plan="stagevar-full", resolution="0.25M", output_type="np")
    assert type(pipe.backend.last_kv_cache.buffer.owner).__name__ == "OrtValue"
    np.testing.assert_array_equal(plain.images, resident.images)


def test_timings_cover_every_stage_and_scale(pipe):
    out = pipe("a cat", seed=0, plan="stagevar", resolution="0.25M")
    t = out.timings
    modes = [s["mode"] for s in t["scales"]]
    assert modes == [m.value for m in make_plan("stagevar", get_schedule("1:1", "0.25M")).modes]
    assert t["scales"][0]["hw"] == [1, 1] and all(s["seconds"] >= 0 for s in t["scales"])
    assert t["text"] > 0 and t["vae"] > 0 and 0 <= t["session"] <= t["total"]
    assert t["overhead"] == pytest.approx(t["total"] - t["session"])


def test_concurrent_calls_are_serialised_and_stay_deterministic(pipe):
    expected = pipe("a lamp", seed=4, plan="stagevar", resolution="0.06M", output_type="np").images
    results = [None] * 3

    def work(i):
        results[i] = pipe("a lamp", seed=4, plan="stagevar", resolution="0.06M", output_type="np").images

    threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    for images in results:
        np.testing.assert_array_equal(images, expected)


def test_pipeline_loads_and_generates_with_torch_unimportable(pipe, artifacts):
    code = textwrap.dedent(f"""
        import hashlib, sys
        for name in ("torch", "transformers", "stagevar.exporter"):
            sys.modules[name] = None  # any import of them now raises ImportError
        from stagevar.runtime.pipeline import Pipeline
        pipe = Pipeline.from_dir({str(artifacts)!r})
        out = pipe("a red bus", seed=11, plan="stagevar", resolution="0.06M", output_type="np")
        loaded = [m for m, v in sys.modules.items() if v is not None]
        assert not any(m.split(".")[0] in ("torch", "transformers") for m in loaded), loaded
        assert not any(m.startswith("stagevar.exporter") for m in loaded)
        print(hashlib.sha256(out.images.tobytes()).hexdigest())
        """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    here = pipe("a red bus", seed=11, plan="stagevar", resolution="0.06M", output_type="np").images
    assert proc.stdout.strip() == hashlib.sha256(here.tobytes()).hexdigest()


# ---- user errors: one sentence each -----------------------------------------------------------


def _one_sentence(exc_info) -> str:
    msg = str(exc_info.value)
    assert "\n" not in msg and msg.endswith("."), msg
    return msg


@pytest.mark.parametrize("kwargs,words", [
    ({"plan": "turbo"}, "turbo"),
    ({"aspect": "10:1"}, "aspect"),
    ({"resolution": "4M"}, "4M"),
    ({"output_type": "tensor"}, "output_type"),
    ({"num_images_per_prompt": 0}, "num_images_per_prompt"),
    ({"seed": -1}, "Seed"),
    ({"seed": [1, 2]}, "seed"),
    ({"tau": 0.0}, "tau"),
    # Out of the runtime's ranges (runtime/guidance.py): finite, yet NaN images before.
    ({"tau": 1e-300}, "tau"),
    ({"cfg": 1e30}, "cfg"),
    ({"cfg": 10**400}, "cfg"),
    ({"cfg": "3"}, "cfg"),
])
def test_bad_call_arguments_raise_one_sentence(pipe, kwargs, words):
    with pytest.raises(StagevarError) as info:
        pipe("a cat", **{"resolution": "0.06M", **kwargs})
    assert words.lower() in _one_sentence(info).lower()


@pytest.mark.parametrize("prompts", [[], "   ", ["a cat", 3]])
def test_bad_prompts_raise_one_sentence(pipe, prompts):
    with pytest.raises(StagevarError) as info:
        pipe(prompts, resolution="0.06M")
    _one_sentence(info)


def test_unknown_or_unavailable_backends_and_devices_are_refused(artifacts):
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        with pytest.raises(StagevarError) as info:
            Pipeline.from_dir(artifacts, backend="trt")
        assert "needs TensorRT" in _one_sentence(info)
    with pytest.raises(StagevarError) as info:
        Pipeline.from_dir(artifacts, plugins="/x/libstagevar_trt_plugin.so")
    assert "trt" in _one_sentence(info)
    with pytest.raises(StagevarError) as info:
        Pipeline.from_dir(artifacts, backend="tvm")
    assert "tvm" in _one_sentence(info)
    with pytest.raises(StagevarError) as info:
        Pipeline.from_dir(artifacts, device="tpu")
    _one_sentence(info)


def test_corrupted_graph_is_refused_by_full_verification(artifacts, tmp_path):
    copy = shutil.copytree(artifacts, tmp_path / "art")
    step = copy / "onnx" / "step.onnx"
    data = bytearray(step.read_bytes())
    data[len(data) // 2] ^= 0x01
    step.write_bytes(bytes(data))
    with pytest.raises(StagevarError) as info:
        Pipeline.from_dir(copy, verify="full")
    assert "onnx/step.onnx" in _one_sentence(info)


def test_manifest_from_a_newer_stagevar_is_refused(artifacts, tmp_path):
    copy = shutil.copytree(artifacts, tmp_path / "art")
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["schema_version"] += 1
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(StagevarError) as info:
        Pipeline.from_dir(copy)
    assert "newer" in _one_sentence(info)


def test_a_tokenizer_path_outside_the_export_is_refused(artifacts, tmp_path):
    """Bug guarded against: the tokenizer path read from manifest.json without the safe-path
    check (a tampered manifest could read any tokenizer.json on the machine)."""
    copy = tmp_path / "art"
    copy.mkdir()
    (copy / "manifest.json").write_bytes((artifacts / "manifest.json").read_bytes())
    elsewhere = tmp_path / "elsewhere.json"
    shutil.copy(artifacts / json.loads((copy / "manifest.json").read_text())["tokenizer"]["path"], elsewhere)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["tokenizer"]["path"] = "../elsewhere.json"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(StagevarError) as info:
        Pipeline.from_dir(copy, verify=False)
    assert "the tokenizer" in _one_sentence(info) and "inside the export" in str(info.value)
