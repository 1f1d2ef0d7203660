"""Writing and reading the weights a training run ships: three safetensors files + provenance.

Layout of a weights folder (exporter/weights/<preset>/ in the package):
  transformer.safetensors   InfinityTransformer state dict (official key names)
  vae.safetensors           BSQ-VAE decoder, official module-form keys + quantizer masks
  text_encoder.safetensors  T5 encoder state dict (HF T5EncoderModel keys)
  provenance.json           command, commit, seed, steps, final losses, licence, sha256 per file
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from stagevar.runtime.errors import StagevarError

from ..checkpoint_io import sha256_file, write_state_dict
from ..infinity.checkpoint import load_transformer
from ..infinity.vae_checkpoint import load_vae_decoder, vae_checkpoint_state_dict

FILES = {"transformer": "transformer.safetensors", "vae": "vae.safetensors",
         "text_encoder": "text_encoder.safetensors"}
PROVENANCE = "provenance.json"
LICENCE = ("Apache-2.0 (the same licence as stagevar); trained from scratch by stagevar-train on "
           "synthetic images the package generates; no third-party data or weights.")
PACKAGE_WEIGHTS = Path(__file__).resolve().parent.parent / "weights"


def write_weights(folder: Path, transformer, vae_decoder, text_encoder, provenance: dict) -> Path:
    """Write the three weight files and the provenance (with their sha256s) into `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_state_dict({k: v.detach().contiguous() for k, v in transformer.state_dict().items()},
                     folder / FILES["transformer"])
    write_state_dict(vae_checkpoint_state_dict(vae_decoder), folder / FILES["vae"])
    # Clones: T5 ties `shared` and `encoder.embed_tokens`; safetensors refuses shared storage.
    write_state_dict({k: v.detach().clone().contiguous() for k, v in text_encoder.t5.state_dict().items()},
                     folder / FILES["text_encoder"])
    for f in FILES.values():  # atomic writes create 0600 files; shipped files are world-readable
        (folder / f).chmod(0o644)
    provenance = dict(provenance, licence=LICENCE,
                      sha256={name: sha256_file(folder / f) for name, f in FILES.items()})
    (folder / PROVENANCE).write_text(json.dumps(provenance, indent=2) + "\n")
    return folder


def weights_folder(name: str) -> Path:
    """The package's shipped weights folder of a preset, or one clear error if it is absent."""
    folder = PACKAGE_WEIGHTS / name
    if not (folder / PROVENANCE).is_file():
        raise StagevarError(f"The shipped weights of {name} are missing from the package ({folder}); "
                            f"reinstall stagevar or rebuild them with stagevar-train.")
    return folder


def verify(folder: Path) -> dict:
    """The provenance of a weights folder, after checking every file's sha256 against it."""
    prov = json.loads((Path(folder) / PROVENANCE).read_text())
    for name, fname in FILES.items():
        path = Path(folder) / fname
        if not path.is_file():
            raise StagevarError(f"{path} is missing; reinstall stagevar or rebuild with stagevar-train.")
        if sha256_file(path) != prov["sha256"][name]:
            raise StagevarError(f"{path} does not match the sha256 in {folder / PROVENANCE}; the file "
                                f"is corrupted or was replaced - reinstall stagevar.")
    return prov


def load_weights(preset, folder: Path):
    """(transformer, vae decoder, text encoder) loaded strictly from a verified weights folder."""
    from safetensors.torch import load_file

    from ..infinity.text_encoder import build_random_text_encoder

    folder = Path(folder)
    prov = verify(folder)
    transformer = load_transformer(folder / FILES["transformer"], preset.transformer, what=f"{preset.name} transformer")
    vae = load_vae_decoder(folder / FILES["vae"], preset.vae)
    text = build_random_text_encoder(preset.text, 0)
    state = load_file(str(folder / FILES["text_encoder"]))
    try:
        text.t5.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise StagevarError(f"{folder / FILES['text_encoder']} does not fit the {preset.name} text "
                            f"encoder ({str(exc).splitlines()[0][:160]}); rebuild with stagevar-train.") from exc
    return transformer.eval(), vae.eval(), text.eval(), prov
