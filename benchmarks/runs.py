"""What the quality benchmarks share: run recipes/train.py in a fresh process, read what it measured.

Each training is its own process so that its peak memory and wall time are its own.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
MINILM = REPO.parent / "shared" / "models" / "all-MiniLM-L6-v2"
TRAIN = [sys.executable, str(REPO / "recipes" / "train.py")]
OFFLINE_ENV = {"TOKENIZERS_PARALLELISM": "false"}


def train(config: str | Path, output_dir: Path, overrides: list[str] = ()) -> dict[str, Any]:
    """Run the training recipe on `config`; returns its metrics.json plus the process's wall time."""
    command = [*TRAIN, "--config", str(config), f"train.output_dir={output_dir}", *overrides]
    print("$", " ".join(command), flush=True)
    started = time.time()
    subprocess.run(command, cwd=REPO, check=True, env={**os.environ, **OFFLINE_ENV})
    metrics = json.loads((output_dir / "metrics.json").read_text())
    metrics["wall_seconds"] = round(time.time() - started, 1)
    return metrics


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


def machine_and_versions() -> dict[str, Any]:
    """Where and with what a benchmark ran, for its results file."""
    import importlib.metadata

    import torch

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for package in ("torch", "transformers", "accelerate", "datasets", "peft", "hfmtl"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": {
            "cpu": cpu,
            "cpu_cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        },
        "versions": {"python": platform.python_version(), **versions, "git_commit": commit.stdout.strip() or None},
    }


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
