#!/usr/bin/env python
"""Input groups: training speed and dev metrics of tasks on the same rows, one encoder pass vs one per task.

For each task set (tasks of configs/conll_group.yaml that read the same CoNLL-2003 sentences), two
trainings on the real MiniLM, side by side in this one invocation, each a fresh `recipes/train.py`
process, at the same per-task budget (--steps batches of every task, the same batch size, learning rate
and schedule shape):

- grouped:  the tasks as one input group: --steps steps, each encoding a batch once for every head;
- separate: the same tasks without the group, in turn (round robin): --steps x tasks steps.

Speed is task-examples per second of training: the rows of each batch times the tasks they train (a
grouped batch trains all of its tasks, a separate one one), counted over the steps after --warmup-steps
and timed from the end of step --warmup-steps to the end of the last step (no evaluation inside). Their
ratio is what one encoder pass per batch buys; it approaches the number of tasks as the encoder dominates
the step. Each run is its own process, so one run's caches and allocations do not favour the next. Dev
metrics are each task's at the last step, on the first --eval-samples validation sentences.

    python benchmarks/shared_input.py                        # both task sets at the default size
    python benchmarks/shared_input.py --steps 300 --eval-samples 3250
    python benchmarks/shared_input.py --smoke                # 3 steps on a tiny random encoder, every
                                                             # run in this process (CI)

Results: outputs/benchmarks/shared_input/ (each run's metrics.json and train.log; results.json with every
number, the machine and the versions); the table is printed at the end. docs/benchmarks.md keeps the
measured numbers with the conditions they were measured in.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/runs.py, also when loaded by path
from runs import OFFLINE_ENV, REPO, machine_and_versions, read_config, tiny_encoder, write_config  # noqa: E402

# name -> the tasks of configs/conll_group.yaml trained as one group (all three, or two of them)
TASK_SETS = {"ner_pos_chunk": ["ner", "pos", "chunk"], "ner_pos": ["ner", "pos"]}
SMOKE_SAMPLES = {"train": 48, "eval": 24}


def grouped(base: dict[str, Any], tasks: list[str], steps: int) -> dict[str, Any]:
    """`tasks` of `base` as one input group, `steps` steps (each trains every task)."""
    config = copy.deepcopy(base)
    config["tasks"] = {name: {**base["tasks"][name], "input_group": "shared"} for name in tasks}
    config["train"].update(max_steps=steps, eval_steps=steps, logging_steps=max(1, min(25, steps // 4)))
    return config


def separate(base: dict[str, Any], tasks: list[str], steps: int) -> dict[str, Any]:
    """`tasks` of `base` without a group, in turn: `steps` x tasks steps, `steps` batches of each."""
    config = copy.deepcopy(base)
    config["tasks"] = {name: {k: v for k, v in base["tasks"][name].items() if k != "input_group"} for name in tasks}
    total = steps * len(tasks)
    config["train"].update(max_steps=total, eval_steps=total, logging_steps=max(1, min(25, total // 4)))
    config["sampling"] = {"strategy": "round_robin"}
    return config


def base_config(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    config = read_config(args.config)
    config["train"].update(
        per_device_train_batch_size=args.batch_size,
        save_steps=None,
        save_total_limit=None,
        load_best_model_at_end=False,
        report_to=[],
        overwrite_output_dir=True,
    )
    model = args.model or (tiny_encoder(root / "tiny-bert") if args.smoke else None)
    if model:
        config["model"]["name_or_path"] = model
    for task in config["tasks"].values():
        task["max_eval_samples"] = args.eval_samples
        if args.smoke:
            task["max_train_samples"] = SMOKE_SAMPLES["train"]
    return config


def measure(root: Path, name: str, config: dict[str, Any], warmup_steps: int, in_process: bool) -> dict[str, Any]:
    """Train `config` in a fresh process (`worker`; with `in_process`, for --smoke, in this one); its
    steady-state speed and final dev metrics."""
    out = root / name
    spec = {"config": config | {"train": {**config["train"], "output_dir": str(out)}}, "warmup_steps": warmup_steps}
    spec_path = write_config(spec, root / f"{name}.spec.yaml")
    result_path = out / "speed.json"
    if in_process:
        worker(str(spec_path), str(result_path))
    else:
        command = [sys.executable, str(Path(__file__).resolve()), "--worker", str(spec_path), str(result_path)]
        print("$", " ".join(command), flush=True)
        subprocess.run(command, cwd=REPO, check=True, env={**os.environ, **OFFLINE_ENV})
    return json.loads(result_path.read_text())


def worker(spec_path: str, result_path: str) -> None:
    """One training through recipes/train.py's `train_stage`, timed by a callback (see the module docstring)."""
    import runpy
    import time

    import yaml

    from hfmtl.config import config_from_dict
    from hfmtl.training.callbacks import TrainerCallback
    from hfmtl.training.setup import build_accelerator

    spec = yaml.safe_load(Path(spec_path).read_text())
    config, warmup = config_from_dict(spec["config"]), spec["warmup_steps"]
    timing: dict[str, Any] = {"task_examples": 0}

    class Timer(TrainerCallback):
        def on_train_begin(self, trainer):
            next_batch = trainer.batches.next

            def counted(unit):
                batch = next_batch(unit)
                if trainer.state.global_step >= warmup:  # a batch of a timed step
                    timing["task_examples"] += batch["input_ids"].shape[0] * len(trainer.units.members[unit])
                return batch

            trainer.batches.next = counted

        def on_step_end(self, trainer, step, task_names):
            if step == warmup:
                timing["start"] = time.perf_counter()
            if step == trainer.total_steps:
                timing["seconds"] = time.perf_counter() - timing["start"]

    recipe = runpy.run_path(str(REPO / "recipes" / "train.py"), run_name="shared_input_recipe")
    trainer = recipe["train_stage"](config, build_accelerator(config, cpu=True), [Timer()])
    result = {
        "steps": trainer.total_steps,
        "timed_steps": trainer.total_steps - warmup,
        "seconds": round(timing["seconds"], 3),
        "task_examples": timing["task_examples"],
        "task_examples_per_second": round(timing["task_examples"] / timing["seconds"], 2),
        "dev": {k: v for k, v in trainer.record.history[-1].items() if k.startswith("eval/") and k != "eval/mean"},
    }
    Path(result_path).write_text(json.dumps(result, indent=2))


def table(results: dict[str, Any]) -> str:
    lines = [
        "Input groups: one encoder pass per batch (grouped) vs one per task (separate), same batches of every task",
        f"{'task set':<15}{'run':<10}{'steps':>7}{'timed s':>9}{'task-ex/s':>11}{'speed-up':>10}  dev (main metrics)",
    ]
    for set_name, runs in results.items():
        for run in ("grouped", "separate"):
            r = runs[run]
            speedup = f"{runs['speedup']:.2f}x" if run == "grouped" else ""
            dev = ", ".join(f"{k.removeprefix('eval/')}={v:.4f}" for k, v in sorted(r["dev"].items()) if _main(k))
            lines.append(
                f"{set_name:<15}{run:<10}{r['steps']:>7}{r['seconds']:>9.1f}"
                f"{r['task_examples_per_second']:>11.1f}{speedup:>10}  {dev}"
            )
    lines.append("task-ex/s: batch rows x tasks trained, per second, over the steps after the warm-up")
    return "\n".join(lines)


def _main(key: str) -> bool:
    """Whether an ``eval/<task>/<metric>`` key is a main metric: entity F1 (NER, chunk) or accuracy (POS)."""
    task, metric = key.split("/")[1:]
    return metric == ("accuracy" if task == "pos" else "f1")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sets", nargs="+", choices=sorted(TASK_SETS), default=list(TASK_SETS), help="Task sets (default all)."
    )
    parser.add_argument("--steps", type=int, default=40, help="Batches of every task (default 40).")
    parser.add_argument("--batch-size", type=int, default=32, help="Sentences per batch (default 32).")
    parser.add_argument(
        "--warmup-steps", type=int, default=3, help="Steps of each run left out of the timing (default 3)."
    )
    parser.add_argument(
        "--eval-samples", type=int, default=500, help="Validation sentences each task is scored on (default 500)."
    )
    parser.add_argument("--config", default="configs/conll_group.yaml", help="The grouped tasks' config.")
    parser.add_argument("--model", help="Encoder directory or Hub id (default: the config's; --smoke: tiny BERT).")
    parser.add_argument("--output-dir", default="outputs/benchmarks/shared_input")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="3 steps on a few examples, every run in this process, to check the script works.",
    )
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)  # internal: one run, from a spec file
    args = parser.parse_args(argv)
    if args.smoke:
        args.steps, args.eval_samples, args.warmup_steps = 3, SMOKE_SAMPLES["eval"], 1
    if not 0 <= args.warmup_steps < args.steps:
        parser.error(f"--warmup-steps must be below --steps ({args.steps})")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        worker(*args.worker)
        return 0
    root = Path(args.output_dir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    base = base_config(args, root)
    results: dict[str, Any] = {}
    for set_name in args.sets:
        tasks = TASK_SETS[set_name]
        runs = {  # the separate run's warm-up: as many task-batches as the grouped run's
            "grouped": measure(
                root, f"{set_name}/grouped", grouped(base, tasks, args.steps), args.warmup_steps, args.smoke
            ),
            "separate": measure(
                root,
                f"{set_name}/separate",
                separate(base, tasks, args.steps),
                args.warmup_steps * len(tasks),
                args.smoke,
            ),
        }
        fast, slow = runs["grouped"]["task_examples_per_second"], runs["separate"]["task_examples_per_second"]
        runs["speedup"] = round(fast / slow, 3)
        runs["tasks"] = len(tasks)
        results[set_name] = runs
    record = machine_and_versions() | {"settings": vars(args) | {"output_dir": str(root)}, "sets": results}
    (root / "results.json").write_text(json.dumps(record, indent=2))
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
