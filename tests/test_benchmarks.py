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

pytestmark = pytest.mark.slow  # a benchmark script's process each (--smoke trains inside it)

SCRIPT = REPO_ROOT / "benchmarks" / "throughput.py"
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def _load_script():
    spec = importlib.util.spec_from_file_location("throughput_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run_script(script, args: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    """A benchmark script in a fresh process, offline, from the repository root."""
    return subprocess.run(
        [sys.executable, str(script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO_ROOT,
        env={**os.environ, **OFFLINE},
    )


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_help_lists_the_options():
    proc = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    for option in (
        "--smoke",
        "--parts",
        "--model",
        "--steps",
        "--repeats",
        "--bf16",
        "--output",
        "--random-encoder",
        "--peak-tflops",
    ):
        assert option in proc.stdout


def test_smoke_run_writes_every_measurement(tmp_path):
    throughput = _load_script()
    output = tmp_path / "throughput.json"
    proc = _run_script(SCRIPT, ["--smoke", "--peak-tflops", "1.5", "--output", str(output)])
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
    # and stepped the same AdamW kernel (train.optim's default, the Trainer's too)
    assert settings["optim"] == "adamw_torch_fused"
    assert hfmtl["optimizer"] == trainer["optimizer"] and "fused" in hfmtl["optimizer"]

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
    assert settings["peak_tflops"] == 1.5 and "MFU (model FLOPs utilisation) against a peak of 1.5" in proc.stdout


def test_model_flops_match_torch_flop_counter():
    """The MFU numerator (6 N per token + attention) against what torch counts for one training step."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import BertConfig, BertForSequenceClassification

    throughput = _load_script()
    torch.manual_seed(0)
    config = BertConfig(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128, vocab_size=100
    )
    model = BertForSequenceClassification(config)
    batch, length = 4, 32
    input_ids = torch.randint(0, 100, (batch, length))
    with FlopCounterMode(display=False) as counter:
        model(input_ids=input_ids, labels=torch.zeros(batch, dtype=torch.long)).loss.backward()
    counted = counter.get_total_flops()
    formula = throughput.model_flops(model, tokens=batch * length, squared_lengths=batch * length**2)
    # the formula counts biases and norms as 6 flops per token too, and leaves out the pooler and the
    # classifier (one token per example): a few percent apart at this tiny size
    assert abs(formula - counted) / counted < 0.05, (formula, counted)


def test_peak_tflops_from_the_datasheet_table_only_under_bf16():
    throughput = _load_script()
    assert throughput.peak_tflops("NVIDIA H100 80GB HBM3", bf16=True, given=None) == 989.4
    assert throughput.peak_tflops("NVIDIA H100 PCIe", bf16=True, given=None) == 756.0
    assert throughput.peak_tflops("NVIDIA H100 80GB HBM3", bf16=False, given=None) is None
    assert throughput.peak_tflops(None, bf16=True, given=None) is None
    assert throughput.peak_tflops("NVIDIA H100 80GB HBM3", bf16=False, given=60.0) == 60.0


QUALITY = REPO_ROOT / "benchmarks" / "quality.py"


def _run_quality(args: list[str]) -> subprocess.CompletedProcess:
    return _run_script(QUALITY, args, timeout=600)


def _finite_scores(dev: dict, tasks) -> bool:
    return {key.split("/")[1] for key in dev} == set(tasks) and all(math.isfinite(v) for v in dev.values())


def test_quality_smoke_run_trains_every_run_and_prints_the_tables(tmp_path):
    out = tmp_path / "quality"
    proc = _run_quality(["--smoke", "--methods", "equal", "pcgrad", "--output-dir", str(out)])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["date"] and results["machine"]["cpu_cores"] >= 1 and results["versions"]["hfmtl"]

    glue_tasks = ["sst2", "cola", "mrpc", "rte", "stsb"]
    glue = results["glue"]
    assert _finite_scores(glue["together"]["dev"], glue_tasks)
    assert set(glue["alone"]) == set(glue_tasks)
    for task, run in glue["alone"].items():
        assert _finite_scores(run["dev"], [task]), task
        assert run["cost"]["steps"] == 2 and _positive(run["cost"]["peak_memory_mb"])
    assert _finite_scores(glue["trainer"]["mrpc"]["dev"], ["mrpc"])
    assert glue["trainer"]["mrpc"]["cost"]["steps"] == 2
    # the together run took the tasks in turn: the same number of batches of each as each alone run
    assert glue["together"]["cost"]["steps"] == 2 * len(glue_tasks)
    assert "sampling {'sst2': 0.2, 'cola': 0.2" in (out / "glue" / "together" / "train.log").read_text()

    # balancing: every method's run, with every task in every step
    for method in ("equal", "pcgrad"):
        run = results["balancing"][method]
        assert _finite_scores(run["dev"], glue_tasks) and run["cost"]["steps"] == 2, method
        log = (out / "balancing" / method / "train.log").read_text()
        assert f"balancing: {method}, all tasks per step" in log

    conll = results["conll"]
    assert _finite_scores(conll["together"]["dev"], ["ner", "pos", "chunk"])
    assert _finite_scores(conll["alone"]["dev"], ["ner"])

    for title in ("GLUE: together vs alone", "balancing methods", "CoNLL-2003: ner alone"):
        assert title in proc.stdout
    for label in ("together (round robin)", "alone (5 runs, summed)", "Trainer, mrpc alone", "pcgrad", "ner alone"):
        assert label in proc.stdout

    # --reuse reads a finished run of the same config back (conll/together); a run whose config is new
    # (pos alone) trains
    again = _run_quality(["--smoke", "--parts", "conll", "--reuse", "--conll-target", "pos", "--output-dir", str(out)])
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("reusing conll/") == 1 and "reusing conll/together" in again.stdout
    assert (out / "conll" / "alone_pos" / "metrics.json").is_file()
    assert _finite_scores(json.loads((out / "results.json").read_text())["conll"]["alone"]["dev"], ["pos"])


def test_quality_refuses_methods_without_equal():
    proc = _run_quality(["--parts", "balancing", "--methods", "pcgrad"])
    assert proc.returncode == 2 and "--methods must include 'equal'" in proc.stderr


def test_profile_loop_smoke_breaks_the_step_down(tmp_path):
    script = REPO_ROOT / "benchmarks" / "profile_loop.py"
    proc = _run_script(script, ["--smoke", "--output-dir", str(tmp_path)])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / "profile.json").read_text())
    assert result["steps_profiled"] == 4 and _positive(result["step_ms"])
    parts = result["parts_ms"]
    # every labelled part was seen, and together they do not exceed the step they sit in
    for label in ("hfmtl/next_batch", "hfmtl/forward", "hfmtl/backward", "hfmtl/optimizer_step"):
        assert _positive(parts[label]), (label, parts)
    assert sum(parts.values()) == pytest.approx(result["step_ms"], rel=1e-6)
    assert sum(result["host_syncs_per_step_by_part"].values()) == pytest.approx(result["host_syncs_per_step"])
    times = [op["self_cpu_ms_per_step"] for op in result["top_ops"]]
    assert times and times == sorted(times, reverse=True) and all(t >= 0 for t in times)
    assert (tmp_path / "trace.json").stat().st_size > 1000
    assert "Per optimizer step" in proc.stdout and "host syncs per step" in proc.stdout


def test_shared_input_smoke_run_measures_both_sides_of_every_task_set(tmp_path):
    script = REPO_ROOT / "benchmarks" / "shared_input.py"
    proc = _run_script(script, ["--smoke", "--output-dir", str(tmp_path)], timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["machine"]["cpu_cores"] >= 1 and results["versions"]["hfmtl"]
    for name, tasks in (("ner_pos_chunk", ["ner", "pos", "chunk"]), ("ner_pos", ["ner", "pos"])):
        runs = results["sets"][name]
        grouped, separate = runs["grouped"], runs["separate"]
        # the same batches of every task: 3 steps of the group, 3 of each task in turn
        assert grouped["steps"] == 3 and separate["steps"] == 3 * len(tasks)
        # timed after the warm-up's first batch (32 of the 48 rows): the last 16 rows of the first pass and
        # the first 32 of the next, for every task, whether grouped or separate
        assert grouped["task_examples"] == separate["task_examples"] == 48 * len(tasks)
        for run in (grouped, separate):
            assert _positive(run["seconds"]) and _positive(run["task_examples_per_second"])
            assert {key.split("/")[1] for key in run["dev"]} == set(tasks)
            assert all(math.isfinite(v) for v in run["dev"].values())
        assert _positive(runs["speedup"])
        assert f"{name:<15}grouped" in proc.stdout
    log = (tmp_path / "ner_pos" / "grouped" / "train.log").read_text()
    assert "input group shared: tasks ['ner', 'pos'] train on one encoder pass per batch" in log


INFERENCE = REPO_ROOT / "benchmarks" / "inference.py"


def test_inference_smoke_measures_every_arm_and_prints_the_ratios(tmp_path):
    """benchmarks/inference.py --smoke: a short training of the GLUE config on a tiny random encoder, then
    every arm of every part on a few real validation rows, and the server with and without batching."""
    output = tmp_path / "inference.json"
    proc = _run_script(INFERENCE, ["--smoke", "--output-dir", str(tmp_path), "--output-json", str(output)])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads(output.read_text())
    assert results["date"] and results["machine"]["cpu_cores"] >= 1 and results["machine"]["torch_threads"] >= 1
    for package in ("torch", "transformers", "hfmtl"):
        assert results["versions"][package]
    assert "does not depend on how long the heads trained" in results["model_note"]
    assert results["load_average_at_start"] >= 0 and results["load_average_at_end"] >= 0

    glue = ["cola", "mrpc", "rte", "sst2", "stsb"]
    arms = results["arms"]
    example = arms["example_input"]  # one input carries the fields of all five tasks
    assert set(example) == {"sentence", "sentence1", "sentence2"} and all(example.values())
    rows = {row["arm"]: row for row in arms["rows"]}
    expected = {"all", "pairs3", "singles2", "five calls", "five pipelines"}
    expected |= {f"one:{t}" for t in glue} | {f"pipeline:{t}" for t in glue}
    assert set(rows) == expected
    for name, row in rows.items():
        assert _positive(row["examples_per_second"]), name
        assert len(row["seconds"]) == results["settings"]["repeats"], name
    # what the shared pass encodes: a sentence and a pair per input for all five tasks, one row for the
    # pair tasks together, one row for each task alone (every task's encoder rows counted, no more)
    assert rows["all"]["encoder_rows_per_example"] == 2
    assert rows["pairs3"]["encoder_rows_per_example"] == rows["singles2"]["encoder_rows_per_example"] == 1
    for task in glue:
        assert rows[f"one:{task}"]["encoder_rows_per_example"] == 1
        assert rows[f"pipeline:{task}"]["encoder_rows_per_example"] == 1
        assert 0 < rows[f"one:{task}"]["padding_efficiency"] <= 1
    ratios = arms["ratios"]
    assert set(ratios["predictor_vs_pipeline"]) == set(glue)
    cost = ratios["cost_vs_one_task"]
    assert {"mrpc+rte+stsb / mrpc", "sst2+cola / sst2", "all 5 tasks / (sst2 + mrpc)"} <= set(cost)
    for group in ratios.values():
        assert all(_positive(value) for value in group.values()), group
    for task, path in arms["exported"].items():  # exported by hfmtl, loaded by transformers.pipeline
        assert json.loads((tmp_path / "exported" / task / "config.json").read_text())["architectures"], path

    serve = results["serve"]
    for arm in ("batched", "unbatched"):
        assert serve[arm]["errors"] == 0 and serve[arm]["requests"] == results["settings"]["requests"]
        assert _positive(serve[arm]["requests_per_s"]) and serve[arm]["p50_ms"] <= serve[arm]["p99_ms"]
    assert serve["batched"]["batching"]["enabled"] and not serve["unbatched"]["batching"]["enabled"]

    for text in ("one call for all tasks, speed-up vs five single-task calls", "mrpc+rte+stsb / mrpc",
                 "Predictor / pipeline", "dynamic batching:", "torch threads", "transformers", "load average"):  # fmt: skip
        assert text in proc.stdout, text


SCALING = REPO_ROOT / "benchmarks" / "scaling.py"


@pytest.mark.engines  # a 2-process launch: make test-all
def test_scaling_smoke_launches_ddp_and_measures_every_process(tmp_path):
    """benchmarks/scaling.py --smoke: the DDP arm through configs/accelerate/ddp.yaml on 2 gloo processes
    (the FSDP2 arm needs GPUs); every process reports its tokens, time and peak memory."""
    proc = _run_script(SCALING, ["--smoke", "--output-dir", str(tmp_path)])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["machine"]["cpu_cores"] >= 1 and results["versions"]["hfmtl"]
    assert set(results["engines"]) == {"ddp"}
    ddp = results["engines"]["ddp"]
    assert ddp["processes"] == 2 and ddp["engine"] == "MULTI_CPU"
    assert sorted(p["process"] for p in ddp["per_process"]) == [0, 1]
    for process in ddp["per_process"]:
        assert process["processes"] == 2 and process["timed_steps"] == 2  # 3 steps, 1 of warm-up
        assert process["rows"] == 2 * 4  # 2 timed steps of batch 4
        assert 0 < process["tokens"] <= process["rows"] * 64
        assert _positive(process["seconds"]) and _positive(process["peak_memory_mb"])
    tokens = sum(p["tokens"] for p in ddp["per_process"])
    slowest = max(p["seconds"] for p in ddp["per_process"])
    assert ddp["tokens_per_second"] == pytest.approx(tokens / slowest, rel=1e-3)
    assert "fsdp_vs_ddp" not in results
    assert "tokens/s per process" in proc.stdout and "ddp" in proc.stdout


def test_scaling_refuses_fsdp_without_a_gpu():
    import torch

    if torch.cuda.is_available():
        pytest.skip("FSDP runs on this machine's GPUs")
    proc = _run_script(SCALING, ["--engines", "fsdp", "--num-processes", "2"], timeout=120)
    assert proc.returncode == 2
    assert (
        proc.stderr.strip()
        .splitlines()[-1]
        .endswith("fsdp needs GPUs: Accelerate builds FSDP for accelerator processes only; use --engines ddp")
    )
