"""benchmarks/throughput.py keeps working: its --smoke run (a few steps of every part on a tiny random
encoder) writes every measurement and prints the tables. Benchmarks are not timed tests: no speed is
asserted here, only that each number is there, positive and finite."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys

import pytest
from conftest import REPO_ROOT

pytestmark = pytest.mark.slow  # several processes, ~40 s

SCRIPT = REPO_ROOT / "benchmarks" / "throughput.py"
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def _load_script():
    spec = importlib.util.spec_from_file_location("throughput_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_help_lists_the_options():
    proc = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    for option in ("--smoke", "--parts", "--model", "--steps", "--repeats", "--bf16", "--output"):
        assert option in proc.stdout


def test_smoke_run_writes_every_measurement(tmp_path):
    throughput = _load_script()
    output = tmp_path / "throughput.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--smoke", "--output", str(output)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO_ROOT,
        env={**os.environ, **OFFLINE},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads(output.read_text())

    assert results["date"]
    assert results["machine"]["cpu"] and results["machine"]["cpu_cores"] >= 1
    assert results["machine"]["device"] in ("cpu", "cuda")
    for package in ("torch", "transformers", "accelerate", "hfmtl"):
        assert results["versions"][package]
    settings = results["settings"]
    assert settings["smoke"] and settings["repeats"] == 1

    # every run: one raw measurement per repeat, each complete
    assert set(results["runs"]) == set(throughput.RUNS)
    for name, run in results["runs"].items():
        assert len(run["measurements"]) == settings["repeats"], name
        for m in run["measurements"]:
            assert m["timed_steps"] == settings["steps"] - settings["warmup_steps"]
            for key in ("seconds", "examples", "tokens", "padded_tokens", *throughput.METRICS):
                assert _positive(m[key]), (name, key, m[key])
            assert m["tokens"] <= m["padded_tokens"] and 0 < m["padding_efficiency"] <= 1
            assert m["examples"] == settings["batch_size"] * m["timed_steps"]
            assert sum(m["batches_per_task"].values()) == m["timed_steps"]
    assert results["runs"]["hfmtl_mix"]["tasks"] == settings["mix"] and len(settings["mix"]) == 5

    # the Trainer was fed the very batches hfmtl was fed
    hfmtl, trainer = (results["runs"][n]["measurements"][0] for n in ("hfmtl_1task", "trainer_1task"))
    assert (hfmtl["tokens"], hfmtl["padded_tokens"]) == (trainer["tokens"], trainer["padded_tokens"])

    # every part: both runs' medians and the ratio, positive and finite (their values are not asserted)
    assert set(results["parts"]) == set(throughput.PARTS)
    for part, summary in results["parts"].items():
        assert len(summary["runs"]) == 2
        for row in summary["runs"].values():
            assert all(_positive(row[m]) for m in throughput.METRICS), (part, row)
        ratio = summary["ratio"]
        assert ratio["numerator"] in results["runs"] and ratio["denominator"] in results["runs"]
        assert all(_positive(ratio[m]) for m in throughput.METRICS), (part, ratio)
        assert len(summary["ratios_per_repeat"]) == settings["repeats"]

    # the printed tables
    assert proc.stdout.count(throughput.TABLE_HEADER) == len(throughput.PARTS)
    for title, _, ratio_name in throughput.PARTS.values():
        assert title in proc.stdout and ratio_name in proc.stdout
