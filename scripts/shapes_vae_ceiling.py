"""The adherence ceiling a shapes-world VAE leaves any transformer: the analyser judged on the
VAE's reconstructions of ground-truth held-out scenes (quantized codes, and the unquantized
encoder output), next to the generator's own images.

    python scripts/shapes_vae_ceiling.py runs/shapes3k [N]     # a stagevar-train run folder

Reads the run's checkpoint.pt (read-only: it is copied first). Numbers: docs/benchmarks.md.
"""

from __future__ import annotations

import io
import shutil
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

from stagevar.exporter.infinity.presets import get_preset
from stagevar.exporter.train.bsq_vae import images_to_tensor, multiscale_quantize
from stagevar.exporter.train.trainer import Trainer, TrainConfig
from stagevar.runtime.schedules import get_schedule
from stagevar.runtime.shapes_analyser import judge, summarise
from stagevar.runtime.shapes_world import sample_batch


def _uint8(x: torch.Tensor):
    return ((x.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()


def main() -> None:
    run, n = Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 128
    tmp = Path(tempfile.mkdtemp())
    shutil.copy(run / "checkpoint.pt", tmp / "checkpoint.pt")
    # The run's own config is in the checkpoint; TrainConfig() must match it (the default recipe).
    trainer = Trainer(get_preset("infinity-shapes"), TrainConfig(), tmp, log=io.StringIO())
    vae = trainer.vae.eval()
    images, _, scenes = sample_batch(999, n, held_out=True)
    x = images_to_tensor(images)
    with torch.no_grad():
        z = vae.encoder(x)
        acc, _, _ = multiscale_quantize(z, get_schedule("1:1", "8x8").scales)
        rows = {"generator images": images,
                "VAE decode of the quantized codes": _uint8(vae.decoder.decoder(acc)),
                "VAE decode of the unquantized encoder output": _uint8(vae.decoder.decoder(F.normalize(z, dim=1)))}
    for name, imgs in rows.items():
        s = summarise([judge(sc, im) for sc, im in zip(scenes, imgs)])
        print(f"{name}: " + " ".join(f"{k} {100 * v:.0f}%" for k, v in s.items() if v is not None))


if __name__ == "__main__":
    main()
