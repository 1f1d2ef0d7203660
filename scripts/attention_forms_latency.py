"""One plan of one export on ONNX Runtime CPU, timed in a fresh process, without the request-memory
refusal (a decomposed-attention export at 1M needs more than the runtime's conservative estimate
allows on a 24 GB machine, yet fits when nothing else runs).

    python scripts/attention_forms_latency.py EXPORT PLAN RESOLUTION [RUNS] [prepack|profile]

`prepack` turns ONNX Runtime's weight pre-packing back on (OrtBackend turns it off so that the
sessions share one host copy of the weights): its effect on latency. `profile` runs one call with
ONNX Runtime's profiler and prints the kernel time per op type instead.

Prints one JSON line: the export's attention form, plan, resolution, each run's seconds, and the
process's peak RSS. A measuring aid for docs/benchmarks.md ("fused vs decomposed"), not part of the
package: `stagevar-bench` keeps the refusal, which protects users.
"""

import json
import resource
import sys
import tempfile
import time

from stagevar.runtime.pipeline import Pipeline


def _op_times(pipe) -> dict:
    import collections

    seconds = collections.Counter()
    for session in pipe.backend.sessions.values():
        with open(session.end_profiling()) as f:
            for event in json.load(f):
                if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
                    seconds[event["args"]["op_name"]] += event["dur"] / 1e6
    return {op: round(t, 2) for op, t in seconds.most_common(8)}


def main(export: str, plan: str, resolution: str, runs: int = 2, option: str = "") -> None:
    if option in ("prepack", "profile"):
        import stagevar.runtime.ort_backend as backend

        plain = backend._session_options

        def changed(device="cpu"):
            options = plain(device)
            if option == "prepack":
                options.add_session_config_entry("session.disable_prepacking", "0")
            else:
                options.enable_profiling = True
                options.profile_file_prefix = f"{tempfile.gettempdir()}/stagevar_ort_profile"
            return options

        backend._session_options = changed
    pipe = Pipeline.from_dir(export)
    pipe.memory_budget = None  # measure, do not refuse
    prompt = "a red apple on a wooden table, studio light"
    pipe(prompt, seed=0, plan=plan, resolution=resolution, output_type="np")  # warm-up (arena growth)
    if option == "profile":
        print(json.dumps({"plan": plan, "resolution": resolution, "kernel_seconds_by_op": _op_times(pipe)}))
        return
    seconds = []
    for _ in range(runs):
        t0 = time.perf_counter()
        pipe(prompt, seed=0, plan=plan, resolution=resolution, output_type="np")
        seconds.append(round(time.perf_counter() - t0, 2))
    print(json.dumps({"attention": pipe.manifest.data.get("attention", {}).get("form"), "plan": plan, "prepack": option == "prepack",
                      "resolution": resolution, "seconds": seconds,
                      "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]) if len(sys.argv) > 4 else 2,
         sys.argv[5] if len(sys.argv) > 5 else "")
