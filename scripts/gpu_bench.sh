#!/usr/bin/env bash
# One prepared GPU measurement (issue 12): Infinity-2B-shaped fp16 graphs with fused attention at
# 1024x1024, per-scale latency of `exact` and `stagevar` on onnxruntime CUDA and eager torch CUDA,
# peak GPU memory, the token-restore plugin's CUDA kernel against numpy. Writes one JSON.
#
#   scripts/gpu_bench.sh [OUT_JSON] [extra args of python -m stagevar.gpu_bench]
#
# Installs nothing from the network. onnxruntime-gpu comes from wheel parts carried in .whl/
# (git-ignored; how to make them: DEVELOPERS.md, "GPU"): the parts are joined and installed with
# --no-deps into a scratch folder put on PYTHONPATH. stagevar itself runs from this checkout through
# a symlinked package tree (no pip install). Budget: about 8 minutes (BUDGET_S, 480 s by default).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
OUT_JSON=${1:-gpu-bench.json}
shift || true
PY=${PYTHON:-python3}
SCRATCH=${STAGEVAR_SCRATCH:-/tmp/stagevar-gpubench}
mkdir -p "$SCRATCH"

has_cuda_ort() {
  "$PY" - <<'PY' 2>/dev/null
import sys
import onnxruntime as ort
if hasattr(ort, "preload_dlls"):
    try:
        ort.preload_dlls()
    except Exception:
        pass
sys.exit(0 if "CUDAExecutionProvider" in ort.get_available_providers() else 1)
PY
}

# 1. onnxruntime-gpu from the carried parts (.whl/onnxruntime_gpu-<ver>-...whl.part-aa, -ab, ...).
if ! has_cuda_ort; then
  shopt -s nullglob
  parts=(.whl/onnxruntime_gpu-*.whl.part-*)
  wheels=(.whl/onnxruntime_gpu-*.whl)
  if (( ${#parts[@]} )); then
    whl="$SCRATCH/$(basename "${parts[0]%.part-*}")"
    cat "${parts[@]}" > "$whl"   # the glob sorts part-aa, part-ab, ... in order
    wheels=("$whl")
  fi
  if (( ${#wheels[@]} )); then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SCRATCH/site" "${wheels[0]}"
    export PYTHONPATH="$SCRATCH/site${PYTHONPATH:+:$PYTHONPATH}"
  fi
  if ! has_cuda_ort; then
    echo "gpu_bench.sh: onnxruntime has no CUDA provider here (no usable onnxruntime-gpu wheel in .whl/, or its CUDA" \
         "libraries are missing; see DEVELOPERS.md, GPU): the report will say the onnxruntime timings were skipped." >&2
  fi
fi

# 2. stagevar from this checkout: the package maps stagevar.runtime -> runtime/ etc. (pyproject).
PKG="$SCRATCH/pkg/stagevar"
rm -rf "$SCRATCH/pkg" && mkdir -p "$PKG"
for f in "$REPO"/stagevar/*.py; do ln -s "$f" "$PKG/"; done
for sub in runtime exporter serve; do ln -s "$REPO/$sub" "$PKG/$sub"; done
export PYTHONPATH="$SCRATCH/pkg${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
# 16 cores there: trace the fidelity graph in a forked process beside the others (off by default
# elsewhere, exporter/background.py); set STAGEVAR_FORK_EXPORT=0 to trace sequentially.
export STAGEVAR_FORK_EXPORT=${STAGEVAR_FORK_EXPORT:-1}

exec "$PY" -m stagevar.gpu_bench --out "$OUT_JSON" --workdir "$SCRATCH/work" --budget-s "${BUDGET_S:-480}" "$@"
