"""transformer benchmark serve: a tiny run through the real command (servers in subprocesses, real HTTP clients);
slow (CI runs it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("httpx")
pytest.importorskip("fastapi")

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow  # 10-17 s: three servers and an offline process, each importing torch
def test_tiny_serve_benchmark_reports_every_figure_and_no_mismatch(tmp_path, sample_checkpoint):
    out = tmp_path / "serve.json"
    command = [sys.executable, "-m", "transformer", "benchmark", "serve", "--checkpoint", str(sample_checkpoint),
               "--sentences", "4", "--clients", "1", "2", "--beam-sizes", "1", "--threads", "1",
               "--soak-seconds", "1", "--json", str(out)]
    result = subprocess.run(command, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["sentences"] == 4 and {"cpu_count", "device_name", "versions"} <= set(report["machine"])

    rows = {(r["service"], r["clients"]): r for r in report["rows"]}
    assert set(rows) == {("offline", None), ("batching", 1), ("batching", 2), ("no batching", 1), ("no batching", 2)}
    assert rows["offline", None]["sentences_per_s"] > 0
    for (service, clients), row in rows.items():
        if service == "offline":
            continue
        assert row["sentences"] == 4 and row["errors"] == 0 and row["mismatches"] == 0
        assert row["sentences_per_s"] > 0 and 0 < row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"]
        assert row["mean_batch"] >= 1 and (service == "batching" or row["mean_batch"] == 1)
    assert rows["batching", 2]["vs_offline"] > 0 and rows["batching", 2]["vs_no_batching"] > 0

    soak = report["soak"]
    assert soak["passed"] and soak["errors"] == 0 and soak["mismatches"] == 0 and soak["sentences"] > 0
    assert soak["rss_start_mib"] > 0 and soak["rss_end_mib"] > 0
    assert "| torch | greedy | batching | 2 |" in result.stdout
