"""`write_triton_repo`: the layout Triton expects, a config.pbtxt that Triton's own protobuf
schema accepts, and one-sentence refusals of bad options."""

import re
from pathlib import Path

import pytest

from stagevar.runtime.errors import StagevarError
from stagevar.serve.request import RequestDefaults
from stagevar.serve.triton_repo import MODEL_SOURCE, TritonRepoConfig, config_pbtxt, write_triton_repo

from .helpers import import_or_skip

VARIANTS = [
    dict(),
    dict(kind="gpu", instances=2, max_batch=1),
    dict(kind="gpu", backend="trt", max_batch=8, max_queue_delay_us=0, warmup=False, verify="full",
         server_artifacts='/models/with "quotes" and \\ backslash',
         defaults=RequestDefaults(plan="exact", aspect="16:9", cfg=4.0, tau=0.5, resolution="0.25M")),
    dict(model_name="infinity-2b.v1", kind="cpu", instances=3, max_batch=2, max_queue_size=5),
]


@pytest.mark.parametrize("options", VARIANTS)
def test_every_generated_config_parses_with_tritons_schema(tiny_artifacts, tmp_path, options):
    model_config_pb2 = import_or_skip("tritonclient.grpc.model_config_pb2", "triton")
    from google.protobuf import text_format

    cfg = TritonRepoConfig(Path(tiny_artifacts), **options)
    model_dir = write_triton_repo(cfg, tmp_path / "repo")
    parsed = text_format.Parse((model_dir / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())

    assert parsed.name == model_dir.name == cfg.model_name
    assert parsed.backend == "python" and parsed.platform == ""
    assert parsed.max_batch_size == cfg.max_batch
    assert parsed.dynamic_batching.max_queue_delay_microseconds == cfg.max_queue_delay_us
    assert parsed.dynamic_batching.default_queue_policy.max_queue_size == cfg.max_queue_size
    (group,) = parsed.instance_group
    kind = model_config_pb2.ModelInstanceGroup.KIND_GPU if cfg.kind == "gpu" else model_config_pb2.ModelInstanceGroup.KIND_CPU
    assert group.kind == kind and group.count == cfg.instances
    inputs = {i.name: i for i in parsed.input}
    assert list(inputs) == ["PROMPT", "CLASS", "SEED", "PLAN", "ASPECT", "CFG", "TAU"]
    # CLASS is declared (optional) for Infinity exports only so that a class gets our refusal.
    assert [n for n, i in inputs.items() if i.optional] == ["CLASS", "PLAN", "ASPECT", "CFG", "TAU"]
    assert inputs["PROMPT"].data_type == model_config_pb2.TYPE_STRING
    assert inputs["CLASS"].data_type == model_config_pb2.TYPE_INT64
    assert inputs["SEED"].data_type == model_config_pb2.TYPE_INT64
    assert inputs["CFG"].data_type == model_config_pb2.TYPE_FP32
    (out,) = parsed.output
    assert out.name == "IMAGE" and out.data_type == model_config_pb2.TYPE_UINT8 and list(out.dims) == [-1, -1, 3]
    params = {k: v.string_value for k, v in parsed.parameters.items()}
    assert params["artifacts"] == (cfg.server_artifacts or str(Path(tiny_artifacts).resolve()))
    assert params["device"] == ("cuda" if cfg.kind == "gpu" else "cpu")
    assert params["backend"] == cfg.backend and params["plan"] == cfg.defaults.plan
    assert params["resolution"] == (cfg.defaults.resolution or "")
    assert re.fullmatch(r"[0-9a-f]{64}", params["manifest_sha256"])


def test_a_typo_in_the_config_is_rejected_by_the_schema(tiny_artifacts):
    model_config_pb2 = import_or_skip("tritonclient.grpc.model_config_pb2", "triton")
    from google.protobuf import text_format

    text = config_pbtxt(TritonRepoConfig(Path(tiny_artifacts)), "0" * 64).replace("TYPE_STRING", "TYPE_STRNG", 1)
    with pytest.raises(text_format.ParseError):
        text_format.Parse(text, model_config_pb2.ModelConfig())


def test_repository_layout_and_model_source(tiny_artifacts, tmp_path):
    model_dir = write_triton_repo(TritonRepoConfig(Path(tiny_artifacts)), tmp_path / "repo")
    assert sorted(p.relative_to(tmp_path / "repo").as_posix() for p in (tmp_path / "repo").rglob("*")) == [
        "stagevar_pipeline", "stagevar_pipeline/1", "stagevar_pipeline/1/model.py", "stagevar_pipeline/config.pbtxt"]
    assert (model_dir / "1" / "model.py").read_text() == MODEL_SOURCE.read_text()
    source = MODEL_SOURCE.read_text()
    assert "class TritonPythonModel" in source and "import torch" not in source and "exporter" not in source


def test_existing_model_is_kept_unless_forced(tiny_artifacts, tmp_path):
    cfg = TritonRepoConfig(Path(tiny_artifacts))
    model_dir = write_triton_repo(cfg, tmp_path)
    (model_dir / "config.pbtxt").write_text("edited")
    with pytest.raises(StagevarError, match="--force"):
        write_triton_repo(cfg, tmp_path)
    assert (model_dir / "config.pbtxt").read_text() == "edited"
    write_triton_repo(TritonRepoConfig(Path(tiny_artifacts), max_batch=2), tmp_path, force=True)
    assert "max_batch_size: 2" in (model_dir / "config.pbtxt").read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["stagevar_pipeline"]  # no staging folder left


@pytest.mark.parametrize("options,needle", [
    (dict(kind="tpu"), "--kind"),
    (dict(instances=0), "--instances"),
    (dict(max_batch=0), "--max-batch"),
    (dict(max_queue_size=0), "--max-queue-size"),
    (dict(device="cuda"), "--kind gpu"),
    (dict(backend="tensorflow"), "--backend"),
    (dict(model_name="my model"), "Model name"),
    (dict(defaults=RequestDefaults(plan="fastest")), "fastest"),
    (dict(defaults=RequestDefaults(aspect="10:1")), "10:1"),
])
def test_bad_options_are_one_sentence_and_write_nothing(tiny_artifacts, tmp_path, options, needle):
    with pytest.raises(StagevarError) as info:
        write_triton_repo(TritonRepoConfig(Path(tiny_artifacts), **options), tmp_path / "repo")
    assert needle in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "repo").exists()


def test_a_folder_that_is_not_an_export_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(StagevarError, match="manifest.json"):
        write_triton_repo(TritonRepoConfig(tmp_path / "empty"), tmp_path / "repo")
    with pytest.raises(StagevarError, match="does not exist"):
        write_triton_repo(TritonRepoConfig(tmp_path / "missing"), tmp_path / "repo")
    assert not (tmp_path / "repo").exists()


@pytest.mark.parametrize("size", [None, 3])
def test_the_triton_queue_is_bounded(tiny_artifacts, size):
    """Bug guarded against: a dynamic batcher without max_queue_size, whose queue grows without
    bound while every instance is busy (Triton's default). Default 64, configurable."""
    options = {} if size is None else {"max_queue_size": size}
    text = config_pbtxt(TritonRepoConfig(Path(tiny_artifacts), **options), "0" * 64)
    (batching,) = re.findall(r"^dynamic_batching \{.*\}$", text, flags=re.M)
    assert f"default_queue_policy {{ max_queue_size: {size or 64} }}" in batching
