"""The second process of an export (side_graphs.py): `python -m stagevar.exporter.infinity.side_worker
JOB RESULT` traces text_encoder and fidelity of the pickled job and writes RESULT.

The process is started before the job exists (side_graphs.SideGraphs.launch): it imports what
tracing needs, then waits for JOB to appear. RESULT is always written when Python gets the
chance: the graphs, or the error (a StagevarError's sentence, or any other exception's
traceback), so the exporting process can raise it as it was.
"""

from __future__ import annotations

import os
import pickle
import sys
import time
import traceback
from pathlib import Path


def wait_for(path: Path, parent: int, what: str) -> None:
    """Until the exporting process has written `path`; it may also never come (the export failed
    or needs no second process), and then that process is gone or kills this one."""
    while not path.is_file():
        if os.getppid() != parent:
            raise SystemExit(f"the exporting process ended before it sent the {what}")
        time.sleep(0.02)


def _block(path: Path):
    import onnx
    import onnx_ir as ir

    return ir.serde.deserialize_model(onnx.load_model_from_string(path.read_bytes()))


def _warm_up() -> None:
    """Imports the graphs' tracing needs, done while the exporting process loads the model."""
    import onnxscript  # noqa: F401
    import transformers.models.t5.modeling_t5  # noqa: F401  (3 s: unpickling the job needs it)
    from torch.onnx._internal.exporter import _registration

    from ..onnx_registry import reused_registry
    from . import export_transformer, graph_text_encoder, model_bundle  # noqa: F401

    with reused_registry():  # built once here, copied for each graph
        _registration.ONNXRegistry.from_torchlib()


def run(job, folder: Path, parent: int):
    from stagevar.runtime import graph_io as gio

    from ..attention_form import attention_export
    from ..onnx_io import graph_proto
    from ..token_pairing import token_pairing
    from .export_transformer import TransformerTracer
    from .graph_text_encoder import export_text_encoder
    from .side_graphs import BLOCK_FILE, SideResult

    timings, graphs = {}, {}

    def traced(name, tracer):
        t0 = time.perf_counter()
        model, initializers = graph_proto(tracer.program(name))
        graphs[name] = (model, {key: value.const_value.numpy() for key, value in initializers.items()})
        timings[name] = round(time.perf_counter() - t0, 3)

    with attention_export(job.attention), token_pairing(job.pairing):
        t0 = time.perf_counter()
        export_text_encoder(job.bundle, Path(job.onnx_dir), job.precision)
        timings[gio.TEXT_ENCODER] = round(time.perf_counter() - t0, 3)
        wait_for(folder / BLOCK_FILE, parent, "traced block")
        traced(gio.FIDELITY, TransformerTracer(job.model, block_model=_block(folder / BLOCK_FILE)))
    return SideResult(timings, graphs)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m stagevar.exporter.infinity.side_worker JOB RESULT (started by stagevar-export; "
              "not a command of its own)", file=sys.stderr)
        return 2
    job_path, result_path = argv
    parent = os.getppid()
    from stagevar.runtime.errors import StagevarError

    try:
        import torch

        torch.set_num_threads(1)
        _warm_up()
        wait_for(Path(job_path), parent, "job")
        job = torch.load(job_path, weights_only=False)  # our own file, written a moment ago
        outcome = {"result": run(job, Path(job_path).parent, parent)}
    except StagevarError as exc:
        outcome = {"stagevar_error": str(exc)}
    except BaseException:  # anything else is a bug: hand its traceback to the parent
        outcome = {"error": traceback.format_exc()}
    with open(result_path + ".tmp", "wb") as f:
        pickle.dump(outcome, f)
    Path(result_path + ".tmp").rename(result_path)
    return 0 if "result" in outcome else 1


if __name__ == "__main__":
    code = main(sys.argv[1:])
    sys.stdout.flush()
    sys.stderr.flush()
    # Interpreter teardown after a torch export takes ~3 s that the exporting process would wait
    # for; everything this process had to write is written and closed.
    os._exit(code)
