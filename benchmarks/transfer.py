#!/usr/bin/env python
"""Transfer-learning evidence on the real MiniLM, run one after the other and tabled side by side.

1. RTE from the plain encoder (configs/rte.yaml) vs RTE after an intermediate stage on MRPC + STS-B +
   SST-2 (configs/rte_transfer.yaml), with the same RTE budget, for each seed.
2. LoRA (configs/sst2_lora.yaml) vs full fine-tuning (the same config without `peft:`) on SST-2 at the
   same number of steps: dev accuracy, trainable parameters, peak memory, time per step.

    python benchmarks/transfer.py                      # everything (about an hour on 2 CPU cores)
    python benchmarks/transfer.py --only lora          # one part
    python benchmarks/transfer.py --smoke              # a few steps of each, to check the script works

Results go to outputs/benchmarks/transfer/ (each run's model and metrics.json, and results.json); the
table is printed at the end. The measured numbers are written down in docs/transfer.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/runs.py
from runs import train  # noqa: E402

SMOKE = {
    "rte": [
        "train.max_steps=4",
        "train.eval_steps=2",
        "tasks.rte.max_train_samples=64",
        "tasks.rte.max_eval_samples=32",
    ],
    "stages": [
        "stages.intermediate.train.max_steps=4",
        "stages.intermediate.train.eval_steps=2",
        "stages.target.train.max_steps=4",
        "stages.target.train.eval_steps=2",
        "train.save_steps=2",
    ]
    + [
        f"tasks.{t}.max_{s}_samples={n}"
        for t in ("mrpc", "stsb", "sst2", "rte")
        for s, n in (("train", 64), ("eval", 32))
    ],
    "sst2": [
        "train.max_steps=4",
        "train.eval_steps=2",
        "tasks.sst2.max_train_samples=64",
        "tasks.sst2.max_eval_samples=32",
    ],
}


def summary(metrics: dict, task: str, metric: str) -> dict:
    """Final and best dev score of one task, the steps, and the time per training step."""
    history = metrics["history"]
    key = f"eval/{task}/{metric}"
    run = metrics["train"]
    train_seconds = run["runtime_seconds"] - run.get("evaluation_seconds", 0.0)
    return {
        "final": history[-1][key],
        "best": max(entry[key] for entry in history),
        "best_step": max(history, key=lambda e: e[key])["step"],
        "steps": run["steps"],
        "seconds_per_step": round(train_seconds / run["steps"], 3),
        "peak_memory_mb": run.get("peak_memory_mb"),
        "wall_seconds": metrics["wall_seconds"],
    }


def trainable_parameters(output_dir: Path) -> str | None:
    """The 'trainable of total' figure the recipe logged."""
    for line in (output_dir / "train.log").read_text().splitlines():
        if "trainable of" in line:
            return line.split("encoder", 1)[1].strip(" ,")
    return None


def run_rte(root: Path, seeds: list[int], smoke: bool) -> dict:
    results: dict = {"plain": {}, "transfer": {}}
    staged = train("configs/rte_transfer.yaml", root / "rte_transfer", SMOKE["stages"] if smoke else [])
    intermediate = root / "rte_transfer" / "intermediate"
    results["intermediate_stage"] = {
        "dev": {k: v for k, v in staged["stages"]["intermediate"]["history"][-1].items() if k.startswith("eval/")},
        "steps": staged["stages"]["intermediate"]["train"]["steps"],
        "runtime_seconds": staged["stages"]["intermediate"]["train"]["runtime_seconds"],
    }
    # seed 1: the staged run's own second stage; further seeds: the same RTE training from the
    # intermediate stage's model, through init_from
    results["transfer"][seeds[0]] = summary(staged["stages"]["target"] | {"wall_seconds": None}, "rte", "accuracy")
    for seed in seeds:
        extra = (SMOKE["rte"] if smoke else []) + [f"train.seed={seed}"]
        plain = train("configs/rte.yaml", root / f"rte_plain_seed{seed}", extra)
        results["plain"][seed] = summary(plain, "rte", "accuracy")
        if seed != seeds[0]:
            out = root / f"rte_transfer_seed{seed}"
            transfer = train("configs/rte.yaml", out, [*extra, f"model.init_from={intermediate}"])
            results["transfer"][seed] = summary(transfer, "rte", "accuracy")
    return results


def run_lora(root: Path, smoke: bool) -> dict:
    extra = SMOKE["sst2"] if smoke else []
    results = {}
    for name, overrides in (("lora", []), ("full", ["peft=null", "train.learning_rate=5e-5"])):
        out = root / f"sst2_{name}"
        metrics = train("configs/sst2_lora.yaml", out, [*extra, *overrides])
        results[name] = summary(metrics, "sst2", "accuracy") | {"parameters": trainable_parameters(out)}
        results[name]["saved_mb"] = round(sum(f.stat().st_size for f in out.glob("*.safetensors")) / 2**20, 2) + round(
            sum(f.stat().st_size for f in out.glob("adapters/**/*.safetensors")) / 2**20, 2
        )
    return results


def print_tables(results: dict) -> None:
    if "rte" in results:
        rte = results["rte"]
        print("\nRTE dev accuracy, same RTE budget (final step / best evaluation @ step):")
        print(f"{'seed':>6} {'plain encoder':>24} {'after intermediate stage':>28}")
        for seed in rte["plain"]:
            p, t = rte["plain"][seed], rte["transfer"][seed]
            print(
                f"{seed:>6} {p['final']:>10.4f} / {p['best']:.4f} @{p['best_step']:<4}"
                f" {t['final']:>14.4f} / {t['best']:.4f} @{t['best_step']:<4}"
            )
        stage = rte["intermediate_stage"]
        print(f"intermediate stage: {stage['steps']} steps, {stage['runtime_seconds']} s, dev {stage['dev']}")
    if "lora" in results:
        print("\nSST-2, LoRA vs full fine-tuning at the same steps:")
        print(f"{'':6} {'dev acc final':>13} {'best':>7} {'s/step':>7} {'peak MB':>8} {'saved MB':>9}  parameters")
        for name, r in results["lora"].items():
            print(
                f"{name:6} {r['final']:>13.4f} {r['best']:>7.4f} {r['seconds_per_step']:>7.3f} "
                f"{r['peak_memory_mb']:>8} {r['saved_mb']:>9.2f}  {r['parameters']}"
            )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=["rte", "lora"], help="Run one part only.")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43], help="Seeds of the RTE stage.")
    parser.add_argument("--smoke", action="store_true", help="A few steps per run, to check the script.")
    parser.add_argument("--output-dir", default="outputs/benchmarks/transfer")
    args = parser.parse_args()
    root = Path(args.output_dir).resolve()
    results: dict = {}
    if args.only in (None, "rte"):
        results["rte"] = run_rte(root, args.seeds, args.smoke)
    if args.only in (None, "lora"):
        results["lora"] = run_lora(root, args.smoke)
    root.mkdir(parents=True, exist_ok=True)
    (root / "results.json").write_text(json.dumps(results, indent=2))
    print_tables(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
