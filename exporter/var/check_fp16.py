"""`--check` of an fp16 VAR export: every graph run in ONNX Runtime and in torch on the same inputs.

Why not the fp32 check (whole generations, ids equal at every scale): in fp16 the two sides differ
by fp16 rounding (~1e-3 relative per GEMM: torch rounds each GEMM's input and output to fp16, the
CPU runtime computes the same fp16 weights in fp32, runtime/fp16_upcast.py), so one sampled id
out of thousands may flip at a CDF boundary and the generations part ways. Here each graph call of
the pipeline is compared with the fp16 torch modules (model.to_fp16_blocks) fed the very same
inputs, within an fp16 tolerance, and the pipeline then continues from torch's outputs (teacher
forcing), so every scale is checked on the reference's own path.
"""

from __future__ import annotations

import numpy as np
import torch

from stagevar.runtime import var_graph_io as vio
from stagevar.runtime.ort_backend import DeviceArray, OrtBackend

# (atol, rtol): |ort - torch| <= atol + rtol * |torch|. 5e-2 as Infinity's fp16 check: fp16 has an
# 11-bit mantissa (4.9e-4 relative per rounding), and a block's output passes through five GEMMs
# and a softmax, over `depth` blocks; logits are O(10). The image may round 2 levels apart.
FP16_TOL = {"default": (5e-2, 5e-2), "image": (2.0, 0.0), "indices": (0.0, 0.0)}


class VarComparingBackend(OrtBackend):
    """The ORT backend that also runs each graph in torch, records the differences as rows and
    hands the pipeline torch's outputs."""

    def __init__(self, manifest, modules: dict, rows: list, plan: str = ""):
        super().__init__(manifest, device="cpu", graphs=vio.VAR_GRAPHS)
        self.modules, self.rows, self.plan = modules, rows, plan
        self.chunks = int(manifest.model["config"]["block_chunks"])

    def _torch(self, graph: str, host: dict) -> dict:
        names, outputs = vio.contract(graph, self.chunks)
        args = [torch.from_numpy(np.ascontiguousarray(host[k])) for k in names]
        with torch.no_grad():
            out = self.modules[graph](*args)
        out = out if isinstance(out, tuple) else (out,)
        return {name: o.numpy() for name, o in zip(outputs, out)}

    def _record(self, graph: str, scale, got: dict, want: dict) -> None:
        for name, g in got.items():
            w = want[name]
            kind = "image" if name == "image" else "indices" if name.startswith("indices_") else "default"
            atol, rtol = FP16_TOL[kind]
            diff = np.abs(g.astype(np.float64) - w.astype(np.float64))
            ok = bool(np.all(np.isfinite(diff)) and np.all(diff <= atol + rtol * np.abs(w.astype(np.float64))))
            self.rows.append({"graph": graph, "plan": self.plan, "scale": scale, "output": name,
                              "max_abs": float(diff.max(initial=0.0)), "atol": atol, "rtol": rtol, "ok": ok})

    def run_plain(self, graph, feeds):
        got = super().run_plain(graph, feeds)
        host = {k: np.asarray(v, dtype=self.input_dtype(graph, k)) for k, v in feeds.items()}
        want = self._torch(graph, host)
        self._record(graph, None, dict(zip(want, got)), want)
        return [want[name] for name in want]

    def run_bound(self, graph, inputs, outputs):
        host = {k: (v.numpy().copy() if isinstance(v, DeviceArray) else np.asarray(v, dtype=self.input_dtype(graph, k)))
                for k, v in inputs.items()}
        super().run_bound(graph, inputs, outputs)
        got = {name: outputs[name].numpy().copy() for name in outputs}
        want = self._torch(graph, host)
        scale = int(host["scale_index"]) if "scale_index" in host else None
        self._record(graph, scale, got, want)
        for name, buffer in outputs.items():  # teacher forcing: continue from torch's values
            buffer.numpy()[...] = want[name].astype(buffer.dtype)


def torch_modules(bundle) -> dict:
    """The fp16 torch counterparts of the exported graphs (the same wrappers the export traced)."""
    from .graphs import ClassCondGraph, VarFidelityGraph, VarStepGraph, VqvaeDecoderGraph
    from .model import to_fp16_blocks

    var = to_fp16_blocks(bundle.var)
    return {vio.CLASS_COND: ClassCondGraph(var).eval(), vio.VAR_STEP: VarStepGraph(var).eval(),
            vio.VAR_FIDELITY: VarFidelityGraph(var).eval(), vio.VQVAE_DECODER: VqvaeDecoderGraph(bundle.vae).eval()}
