"""One plan of one export on ONNX Runtime CPU, timed in a fresh process, without the request-memory
refusal (a decomposed-attention export at 1M needs more than the runtime's conservative estimate
allows on a 24 GB machine, yet fits when nothing else runs).

    python scripts/attention_forms_latency.py EXPORT PLAN RESOLUTION [RUNS] [prepack]

`prepack` turns ONNX Runtime's weight pre-packing back on (OrtBackend turns it off so that the
sessions share one host copy of the weights): its effect on latency.

Prints one JSON line: the export's attention form, plan, resolution, each run's seconds, and the
process's peak RSS. A measuring aid for docs/benchmarks.md ("fused vs decomposed"), not part of the
package: `stagevar-bench` keeps the refusal, which protects users.
"""

import json
import resource
import sys
import time

from stagevar.runtime.pipeline import Pipeline


def main(export: str, plan: str, resolution: str, runs: int = 2, prepack: bool = False) -> None:
    if prepack:
        import stagevar.runtime.ort_backend as backend

        off = backend._session_options

        def with_prepacking(device="cpu"):
            options = off(device)
            options.add_session_config_entry("session.disable_prepacking", "0")
            return options

        backend._session_options = with_prepacking
    pipe = Pipeline.from_dir(export)
    pipe.memory_budget = None  # measure, do not refuse
    prompt = "a red apple on a wooden table, studio light"
    pipe(prompt, seed=0, plan=plan, resolution=resolution, output_type="np")  # warm-up (arena growth)
    seconds = []
    for _ in range(runs):
        t0 = time.perf_counter()
        pipe(prompt, seed=0, plan=plan, resolution=resolution, output_type="np")
        seconds.append(round(time.perf_counter() - t0, 2))
    print(json.dumps({"attention": pipe.manifest.data.get("attention", {}).get("form"), "plan": plan, "prepack": prepack,
                      "resolution": resolution, "seconds": seconds,
                      "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]) if len(sys.argv) > 4 else 2,
         len(sys.argv) > 5 and sys.argv[5] == "prepack")
