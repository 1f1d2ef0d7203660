"""serve/bench_serving.py: the client harness and the statistics it reports, on stand-in senders
and a fake clock (timings are never asserted on the real clock), plus one real `direct` run."""

import argparse
import json

import numpy as np
import pytest

from stagevar.serve import bench_serving
from stagevar.serve.bench_serving import _paired, _run_clients, main

from .helpers import RESOLUTION


class FakeClock:
    """Replaces time.perf_counter in bench_serving; senders advance it by what they 'cost'."""

    def __init__(self, monkeypatch):
        self.now = 0.0
        monkeypatch.setattr(bench_serving.time, "perf_counter", lambda: self.now)


def test_every_client_sends_its_requests_and_each_latency_is_recorded():
    """Bug guarded against: clients that share or skip request numbers (so fewer distinct
    prompts or seeds are measured than reported) or latencies lost between threads."""
    sent, opened, closed = [], [], []

    class Sender:
        def open(self):
            opened.append(1)
            return object()

        def close(self, client):
            closed.append(client)

        def __call__(self, client, i, j):
            sent.append((i, j))

    latencies, wall = _run_clients(Sender(), clients=3, per_client=4)
    assert sorted(sent) == [(i, j) for i in range(3) for j in range(4)]
    assert len(latencies) == 12 and all(t >= 0 for t in latencies) and wall >= 0
    assert len(opened) == len(closed) == 3


def test_a_failing_client_fails_the_run():
    def send(client, i, j):
        if (i, j) == (1, 1):
            raise RuntimeError("HTTP 500")

    with pytest.raises(RuntimeError, match="HTTP 500"):
        _run_clients(send, clients=2, per_client=2)


def test_paired_mode_reports_the_median_served_minus_direct_difference(monkeypatch):
    """Bug guarded against: the overhead computed from unpaired medians, or with the two sides
    swapped. Direct calls cost 1.0 s and served ones 1.0 s + 0.1 s * j on the fake clock: the
    per-request overheads are 0, 100, ..., 500 ms, median 250 ms."""
    clock = FakeClock(monkeypatch)

    def direct(client, i, j):
        clock.now += 1.0

    def served(client, i, j):
        clock.now += 1.0 + 0.1 * j

    result = _paired(argparse.Namespace(target="ray", requests_per_client=6, resolution=None), served, direct)
    assert result["requests"] == 6 and result["direct_p50_ms"] == 1000.0
    assert result["served_p50_ms"] == pytest.approx(1250.0)
    assert result["overhead_p50_ms"] == pytest.approx(250.0)
    assert result["overhead_p10_p90_ms"] == pytest.approx([50.0, 450.0])


def test_direct_target_runs_the_pipeline_and_reports_requests_and_percentiles(tiny_artifacts, tmp_path, capsys):
    out = tmp_path / "serving.jsonl"
    args = ["--target", "direct", "--clients", "2", "--requests-per-client", "2", "--resolution", RESOLUTION]
    assert main([str(tiny_artifacts), *args, "--json", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert json.loads(out.read_text().splitlines()[-1]) == printed
    assert printed["target"] == "direct" and printed["requests"] == 4 and printed["clients"] == 2
    assert printed["max_batch"] == 1 and printed["resolution"] == RESOLUTION
    assert 0 < printed["p50_ms"] <= printed["p90_ms"] and printed["requests_per_s"] > 0
    direct = bench_serving._Direct(tiny_artifacts, RESOLUTION)
    image = direct(None, 1, 0)  # client 1, request 0: the prompt and seed the harness sends
    np.testing.assert_array_equal(image, direct.pipe("benchmark prompt from client 1", seed=1000,
                                                     resolution=RESOLUTION, output_type="np").images[0])

