"""stagevar-train and the shipped infinity-shapes weights."""

import json
import shutil

import pytest
import torch

from stagevar.exporter.infinity.presets import get_preset
from stagevar.exporter.train.shipped import FILES, PACKAGE_WEIGHTS, PROVENANCE, load_weights, verify, write_weights
from stagevar.exporter.train.trainer import Trainer, TrainConfig
from stagevar.runtime.errors import StagevarError

PRESET = get_preset("infinity-shapes")


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("train")
    cfg = TrainConfig(vae_steps=3, steps=14, batch=4, lr=1e-2, save_every=7)
    trainer = Trainer(PRESET, cfg, out)
    trainer.run()
    return trainer, out, cfg


def test_a_short_run_decreases_the_bit_loss(short_run):
    # Guards against a training step that does not learn (labels misaligned with logits, no
    # optimizer step, gradients cut): the bit cross-entropy starts at ln 2 (zero head) and drops.
    trainer, _, _ = short_run
    ce = [r["bit_ce"] for r in trainer.history if r["phase"] == "transformer"]
    assert ce[0] == pytest.approx(0.6931, abs=1e-3)
    assert min(ce[-3:]) < ce[0] - 0.005


def test_resuming_continues_exactly(short_run, tmp_path):
    # Guards against resume paths that restart data, the step counter or optimizer state:
    # a run stopped at step 7 and resumed ends with the uninterrupted run's weights.
    trainer, out, cfg = short_run
    first = Trainer(PRESET, cfg, tmp_path)
    first.run(stop_after=7)
    resumed = Trainer(PRESET, cfg, tmp_path)
    assert resumed.step == 7
    resumed.run()
    for (k, a), b in zip(trainer.transformer.state_dict().items(), resumed.transformer.state_dict().values()):
        assert torch.equal(a, b), k


def test_weights_round_trip_through_save_and_strict_load(short_run, tmp_path):
    # Guards against key/shape drift between the trained modules and the loaders (a key the
    # loader would silently re-initialise) and against provenance hashes of other bytes.
    trainer, _, _ = short_run
    folder = write_weights(tmp_path / "w", trainer.transformer, trainer.vae.decoder, trainer.text, {"seed": 0})
    transformer, vae, text, prov = load_weights(PRESET, folder)
    for name, (mine, theirs) in {"transformer": (trainer.transformer, transformer), "vae": (trainer.vae.decoder, vae),
                                 "text": (trainer.text.t5, text.t5)}.items():
        for (k, a), b in zip(mine.state_dict().items(), theirs.state_dict().values()):
            assert torch.equal(a, b), (name, k)
    assert prov["seed"] == 0 and set(prov["sha256"]) == set(FILES)


def test_a_corrupted_weights_file_is_refused_in_one_sentence(short_run, tmp_path):
    # Guards against loading a damaged or swapped file without noticing.
    trainer, _, _ = short_run
    folder = write_weights(tmp_path / "w", trainer.transformer, trainer.vae.decoder, trainer.text, {})
    path = folder / FILES["vae"]
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(StagevarError, match="does not match the sha256"):
        verify(folder)


def test_the_shipped_weights_load_strictly_and_match_their_provenance():
    # Guards against shipping weights that do not fit the preset, files missing from the
    # package data, or a provenance whose sha256s describe other files.
    folder = PACKAGE_WEIGHTS / PRESET.shipped_weights
    prov = json.loads((folder / PROVENANCE).read_text())
    for key in ("command", "commit", "seed", "steps", "final_losses", "licence"):
        assert key in prov
    size = sum((folder / f).stat().st_size for f in FILES.values())
    assert size <= 20 * 2**20
    load_weights(PRESET, folder)  # strict; raises on any mismatch
