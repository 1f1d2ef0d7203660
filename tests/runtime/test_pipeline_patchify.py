"""The 8B-style variant (56 bits per token = 14 code channels x 2x2 unshuffle) through export + runtime."""

import numpy as np
import pytest


@pytest.fixture(scope="module")
def patchify_export(tmp_path_factory):
    from stagevar.exporter.infinity.export_artifacts import export_artifacts
    from stagevar.exporter.infinity.model_bundle import InfinityBundle
    from stagevar.exporter.infinity.presets import infinity_tiny_patchify

    bundle = InfinityBundle.random(infinity_tiny_patchify(), seed=0)
    return bundle, export_artifacts(bundle, tmp_path_factory.mktemp("patchify") / "art")


@pytest.mark.parametrize("plan", ["exact", "stagevar"])
def test_patchified_pipeline_samples_the_same_bits_as_the_reference(patchify_export, plan):
    from stagevar.exporter.infinity.sampler import ReferenceSampler
    from stagevar.runtime.pipeline import Pipeline

    bundle, out = patchify_export
    ours = Pipeline.from_dir(out)("a cat", seed=0, plan=plan, resolution="0.25M", output_type="np", return_intermediates=True)
    ref = ReferenceSampler(bundle).generate("a cat", seed=0, plan=plan, resolution="0.25M", keep_intermediates=True)
    assert ours.images.shape == ref.images.shape == (1, 128, 128, 3)
    for trace, record in zip(ours.intermediates, ref.records):
        if record.bits is not None:
            assert trace.bits.shape[-1] == 56
            np.testing.assert_array_equal(trace.bits, record.bits)
    assert np.abs(ours.images.astype(int) - ref.images.astype(int)).max() <= 1
