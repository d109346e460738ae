"""What the quality benchmarks share: run recipes/train.py in a fresh process, read what it measured.

Each training is its own process so that its peak memory and wall time are its own. A --smoke run trains
in the benchmark's own process instead (`in_process`): it only checks that the script works, and a fresh
process spends most of a tiny run importing torch and transformers (8-10 s for hfmtl's trainer here; the
quality smoke took 128 s with a process per run, 30 s in one).
"""

from __future__ import annotations

import contextlib
import copy
import os
import platform
import runpy
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from hfmtl.run_record import RunRecord

REPO = Path(__file__).resolve().parents[1]
MINILM = REPO.parent / "shared" / "models" / "all-MiniLM-L6-v2"
RECIPE = REPO / "recipes" / "train.py"
TRAIN = [sys.executable, str(RECIPE)]
OFFLINE_ENV = {"TOKENIZERS_PARALLELISM": "false"}


def train(
    config: str | Path, output_dir: Path, overrides: list[str] = (), *, in_process: bool = False
) -> dict[str, Any]:
    """Run the training recipe on `config`; returns its run record (metrics.json) plus the wall time.

    `in_process`: the recipe's `run` in this process, on the same arguments (for --smoke runs: the
    record's peak memory is then this process's so far, not the run's own)."""
    args = ["--config", str(config), f"train.output_dir={output_dir}", *overrides]
    started = time.time()
    if in_process:
        print("$ (in this process) recipes/train.py", " ".join(args), flush=True)
        recipe = runpy.run_path(str(RECIPE), run_name="benchmark_recipe")
        recipe["run"](recipe["parse_args"](args))
    else:
        command = [*TRAIN, *args]
        print("$", " ".join(command), flush=True)
        subprocess.run(command, cwd=REPO, check=True, env={**os.environ, **OFFLINE_ENV})
    metrics = RunRecord.read(output_dir).to_dict()
    metrics["wall_seconds"] = round(time.time() - started, 1)
    return metrics


def budget(config: dict[str, Any], steps: int, batch_size: int, eval_steps: int | None) -> dict[str, Any]:
    """A copy of `config` at a benchmark's budget: `steps` optimizer steps of `batch_size` rows, an
    evaluation every `eval_steps` (None: only the saved model's, at the end), no checkpoints (the final
    model is still saved), no best-model reload, no trackers."""
    config = copy.deepcopy(config)
    config["train"].update(
        max_steps=steps,
        per_device_train_batch_size=batch_size,
        eval_steps=eval_steps,
        save_steps=None,
        save_total_limit=None,
        load_best_model_at_end=False,
        logging_steps=max(1, min(25, steps // 4)),
        report_to=[],
    )
    return config


def write_config(data: dict[str, Any], path: Path) -> Path:
    """Write a derived run config (a plain dict, as the YAML files hold) for `train`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def read_config(path: str | Path) -> dict[str, Any]:
    return yaml.safe_load((REPO / path).read_text())


def final_dev(metrics: dict[str, Any]) -> dict[str, float]:
    """The last evaluation's `eval/<task>/<metric>` values (the run evaluates once, at its last step)."""
    return {k: v for k, v in metrics["history"][-1].items() if k.startswith("eval/") and k != "eval/mean"}


def run_cost(metrics: dict[str, Any]) -> dict[str, Any]:
    """Training time (evaluation excluded), steps and peak memory, as the trainer recorded them."""
    run = metrics["train"]
    return {
        "steps": run["steps"],
        "train_seconds": round(run["runtime_seconds"] - run.get("evaluation_seconds", 0.0), 1),
        "peak_memory_mb": run.get("peak_memory_mb"),
        "wall_seconds": metrics.get("wall_seconds"),
    }


def machine(device: str | None = None) -> dict[str, Any]:
    """The machine a benchmark ran on; `device`: the torch device type its runs used, when one was chosen."""
    import torch

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    on_gpu = torch.cuda.is_available() and device in (None, "cuda")
    return ({"device": device} if device else {}) | {
        "cpu": cpu,
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if on_gpu else None,
        "platform": platform.platform(),
    }


def versions() -> dict[str, str | None]:
    """Python, the packages a run depends on, and the git commit of the checkout."""
    import importlib.metadata

    found: dict[str, str | None] = {"python": platform.python_version()}
    for package in ("torch", "transformers", "accelerate", "datasets", "peft", "hfmtl"):
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            found[package] = None
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    found["git_commit"] = commit.stdout.strip() if commit.returncode == 0 else None
    return found


def machine_and_versions() -> dict[str, Any]:
    """Where and with what a benchmark ran, for its results file."""
    return {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": machine(), "versions": versions()}


def random_encoder(directory: Path, **bert_config: int) -> str:
    """A randomly initialised BERT (BertConfig's defaults are bert-base: 12 layers, hidden 768) with
    MiniLM's tokenizer (the same uncased WordPiece vocabulary), saved to `directory`."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(0)
    BertModel(BertConfig(**bert_config)).save_pretrained(directory)
    AutoTokenizer.from_pretrained(str(MINILM)).save_pretrained(directory)
    return str(directory)


def tiny_encoder(directory: Path) -> str:
    """A 2-layer, hidden-64 random BERT (as tests/conftest.py), for --smoke runs."""
    return random_encoder(directory, hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128)
