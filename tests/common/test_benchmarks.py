"""The benchmark scripts run and print the JSON line they promise (numbers are never asserted)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
FIELDS = {"median_s_per_step", "mean_s_per_step", "median_cpu_s_per_step", "images_per_s", "peak_rss_gb", "compile_s", "batch", "steps",
          "threads", "framework", "device"}


def run_benchmark(script: str, *args: str) -> dict:
    done = subprocess.run([sys.executable, str(REPO_ROOT / "benchmarks" / script), *args],
                          capture_output=True, text=True, timeout=600, cwd=REPO_ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize("framework", ["torch", "jax"])
@pytest.mark.parametrize("script,extra", [("train_step.py", ()), ("sample.py", ("--mode", "reconstruction"))])
def test_benchmark_prints_one_json_line(framework, script, extra):
    record = run_benchmark(script, "--framework", framework, "--config", "egs/quickstart.cfg",
                           "--batch", "2", "--steps", "2", "--warmup", "0", "--threads", "1", *extra)
    assert FIELDS <= record.keys()
    assert record["framework"] == framework and record["steps"] == 2 and record["threads"] == 1
    assert record["median_s_per_step"] > 0 and record["images_per_s"] > 0
