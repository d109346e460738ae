#!/usr/bin/env python
"""Does training tasks together pay, and how should they be weighted? Dev metrics at one fixed budget.

Parts (each training is a fresh `recipes/train.py` process on the real MiniLM; one evaluation, at the
last step):

- glue       the 5 GLUE tasks of configs/glue.yaml trained together -- hfmtl's usual loop, one task per
             step, the tasks in turn (round robin), 5 x --steps steps -- vs each task trained alone for
             --steps steps: the same per-task budget (--steps batches of every task), batch size,
             learning rate and schedule shape; plus `transformers.Trainer` on one task (--trainer-task)
             as a cross-check of the single-task numbers.
- balancing  all-tasks steps (`balancing.step: all_tasks`: every optimizer step takes one batch of every
             task, --steps steps, the same per-task budget again) with each balancing method of --methods:
             equal weighting against loss weightings and gradient-conflict methods, with training time
             and peak memory.
- conll      CoNLL-2003 NER alone vs NER + POS + chunk together (configs/conll.yaml), as the glue part.

    python benchmarks/quality.py                              # every part (over an hour on 2 CPU cores)
    python benchmarks/quality.py --parts balancing --methods equal uncertainty pcgrad cagrad
    python benchmarks/quality.py --smoke                      # a few steps of each on tiny data (CI),
                                                              # every run in this one process

Results: outputs/benchmarks/quality/ (each run's model, metrics.json and train.log; results.json with
every number, the machine and the versions); the tables are printed at the end. The measured numbers are
written down in docs/benchmarks.md (and docs/balancing.md for the balancing part).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/runs.py, also when loaded by path
from runs import (  # noqa: E402
    REPO,
    budget,
    final_dev,
    machine_and_versions,
    read_config,
    run_cost,
    tiny_encoder,
    train,
    write_config,
)

PARTS = ("glue", "balancing", "conll")
DEFAULT_METHODS = ["equal", "uncertainty", "uncertainty:lr=8.0e-5", "pcgrad", "cagrad"]
SMOKE_SAMPLES = {"train": 48, "eval": 24}


def _budget(config: dict[str, Any], steps: int, batch_size: int, smoke: bool) -> dict[str, Any]:
    """`config` with the benchmark's budget: `steps` optimizer steps, one evaluation at the end, no
    intermediate checkpoints (the final model is still saved)."""
    config = budget(config, steps, batch_size, eval_steps=steps)
    if smoke:
        for task in config["tasks"].values():
            task.update(max_train_samples=SMOKE_SAMPLES["train"], max_eval_samples=SMOKE_SAMPLES["eval"])
    return config


def together(base: dict[str, Any]) -> dict[str, Any]:
    """The tasks in turn, one per step, `max_steps` batches of each: max_steps x tasks steps in all."""
    config = copy.deepcopy(base)
    steps = config["train"]["max_steps"] * len(config["tasks"])
    config["train"].update(
        max_steps=steps, eval_steps=steps, logging_steps=config["train"]["logging_steps"] * len(config["tasks"])
    )
    config["sampling"] = {"strategy": "round_robin"}
    return config


def parse_method(spec: str) -> tuple[str, dict[str, Any]]:
    """``name`` or ``name:key=value,key=value`` (values read as YAML) -> (method, options)."""
    import yaml

    name, _, options = spec.partition(":")
    parsed = {}
    for item in filter(None, options.split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"error: method {spec!r}: options look like name:key=value,key=value")
        parsed[key] = yaml.safe_load(value)
    return name, parsed


def all_tasks(base: dict[str, Any], method_spec: str) -> dict[str, Any]:
    """Every task in every step, their losses (or gradients) combined by the method of `method_spec`."""
    config = copy.deepcopy(base)
    method, options = parse_method(method_spec)
    config["balancing"] = {"step": "all_tasks", "method": method} | ({"options": options} if options else {})
    return config


def alone(base: dict[str, Any], task: str) -> dict[str, Any]:
    """One task of `base`, with everything else the same."""
    config = copy.deepcopy(base)
    config["tasks"] = {task: config["tasks"][task]}
    config["sampling"] = {"strategy": "uniform"}
    config.pop("balancing", None)
    return config


class Runner:
    """Trains each named run once per benchmark invocation; with `reuse`, a run whose output directory
    already holds metrics.json from the same config is read back instead of trained again (to resume an
    interrupted benchmark); `in_process` (--smoke): every run in this process (benchmarks/runs.py)."""

    def __init__(self, root: Path, reuse: bool, in_process: bool = False):
        self.root, self.reuse, self.in_process = root, reuse, in_process
        self.done: dict[str, dict[str, Any]] = {}

    def run(self, name: str, config: dict[str, Any]) -> dict[str, Any]:
        if name in self.done:
            return self.done[name]
        output_dir = self.root / name
        config = copy.deepcopy(config)
        config["train"]["output_dir"] = str(output_dir)
        config_path = write_config(config, self.root / "configs" / f"{name}.yaml")
        metrics_path = output_dir / "metrics.json"
        requested = output_dir / "benchmark_config.yaml"
        if (
            self.reuse
            and metrics_path.exists()
            and requested.exists()
            and requested.read_text() == config_path.read_text()
        ):
            print(f"reusing {name}: {metrics_path}", flush=True)
            metrics = json.loads(metrics_path.read_text())
        else:
            # overwrite: a benchmark run always starts from scratch (a stale checkpoint would resume)
            metrics = train(config_path, output_dir, ["train.overwrite_output_dir=true"], in_process=self.in_process)
            requested.write_text(config_path.read_text())
        self.done[name] = {
            "dev": final_dev(metrics),
            "cost": run_cost(metrics),
            "main_metrics": metrics["main_metrics"],
        }
        return self.done[name]


def run_trainer(root: Path, name: str, config: dict[str, Any], in_process: bool = False) -> dict[str, Any]:
    """The Trainer cross-check, in its own process (so that its peak memory is its own); `in_process`
    (--smoke): in this one."""
    output_dir = root / name
    output_dir.mkdir(parents=True, exist_ok=True)
    config = copy.deepcopy(config)
    config["train"]["output_dir"] = str(output_dir)
    spec = output_dir / "spec.json"
    spec.write_text(json.dumps(config))
    started = time.time()
    if in_process:
        trainer_worker(str(spec))
    else:
        command = [sys.executable, str(Path(__file__).resolve()), "--trainer-worker", str(spec)]
        print("$", " ".join(command), flush=True)
        subprocess.run(command, cwd=REPO, check=True)
    result = json.loads((output_dir / "result.json").read_text())
    result["cost"]["wall_seconds"] = round(time.time() - started, 1)
    return result


def trainer_worker(spec_path: str) -> None:
    """`transformers.Trainer` + AutoModelForSequenceClassification on one task of hfmtl's config: the
    same tokenized features, batch size, steps, learning rate, warm-up, schedule, clipping, seed and
    length grouping as hfmtl's single-task run; scored by hfmtl's own metric functions."""
    import contextlib

    import numpy as np
    import torch
    from transformers import AutoModelForSequenceClassification, Trainer, TrainingArguments, set_seed

    from hfmtl import build_task
    from hfmtl.config import config_from_dict
    from hfmtl.tasks.metrics import compute_metric
    from hfmtl.training.data import load_tokenizer, prepare_task_data
    from hfmtl.training.setup import peak_memory_mb

    config = config_from_dict(json.loads(Path(spec_path).read_text()))
    ((name, task_config),) = config.tasks.items()
    task = build_task(name, task_config)
    tokenizer = load_tokenizer(config.model)
    data = prepare_task_data(task, tokenizer, config.model.max_length, contextlib.nullcontext)
    head = task.head_spec()
    t = config.train
    set_seed(t.seed)
    model = AutoModelForSequenceClassification.from_pretrained(
        config.model.name_or_path, num_labels=head["num_labels"], problem_type=head["problem_type"]
    )
    args = TrainingArguments(
        output_dir=t.output_dir,
        seed=t.seed,
        max_steps=t.max_steps,
        per_device_train_batch_size=t.per_device_train_batch_size,
        per_device_eval_batch_size=t.per_device_eval_batch_size,
        learning_rate=t.learning_rate,
        weight_decay=t.weight_decay,
        warmup_steps=t.warmup_steps,  # the same meaning in both: a float < 1 is a ratio
        lr_scheduler_type=t.lr_scheduler_type,
        max_grad_norm=t.max_grad_norm,
        optim=t.optim,  # the AdamW kernel hfmtl's run uses
        train_sampling_strategy=t.train_sampling_strategy,
        eval_strategy="no",
        save_strategy="no",
        logging_steps=t.logging_steps,
        report_to="none",
        use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0,
    )
    trainer = Trainer(model=model, args=args, train_dataset=data.train, processing_class=tokenizer)
    train_output = trainer.train()
    prediction = trainer.predict(data.eval_features)
    logits = prediction.predictions
    predictions = logits.squeeze(-1) if head["problem_type"] == "regression" else np.argmax(logits, axis=-1)
    references = np.asarray(data.eval_features["labels"])
    dev = {}
    for metric in task_config.metrics:
        for key, value in compute_metric(metric, predictions, references).items():
            dev[f"eval/{name}/{key}"] = value
    result = {
        "dev": dev,
        "cost": {
            "steps": train_output.global_step,
            "train_seconds": round(train_output.metrics["train_runtime"], 1),
            "peak_memory_mb": round(peak_memory_mb(args.device)),
        },
        "main_metrics": {name: task.main_metric},
    }
    (Path(t.output_dir) / "result.json").write_text(json.dumps(result))


# --- the parts ----------------------------------------------------------------------------------------


def _main_score(run: dict[str, Any], task: str) -> float:
    return run["dev"][f"eval/{task}/{run['main_metrics'][task]}"]


def glue_part(runner: Runner, base: dict[str, Any], trainer_task: str | None, root: Path) -> dict[str, Any]:
    result: dict[str, Any] = {"together": runner.run("glue/together", together(base)), "alone": {}}
    for task in base["tasks"]:
        result["alone"][task] = runner.run(f"glue/alone_{task}", alone(base, task))
    if trainer_task:
        trainer = alone(base, trainer_task)
        trainer["train"]["output_dir"] = None
        result["trainer"] = {
            trainer_task: run_trainer(root, f"glue/trainer_{trainer_task}", trainer, runner.in_process)
        }
    return result


def balancing_part(runner: Runner, base: dict[str, Any], methods: list[str]) -> dict[str, Any]:
    return {m: runner.run(f"balancing/{m.replace(':', '_').replace(',', '_')}", all_tasks(base, m)) for m in methods}


def conll_part(runner: Runner, base: dict[str, Any], target: str) -> dict[str, Any]:
    return {
        "alone": runner.run(f"conll/alone_{target}", alone(base, target)),
        "together": runner.run("conll/together", together(base)),
    }


# --- tables --------------------------------------------------------------------------------------------


def _row(label: str, scores: list[float | None], cost: dict[str, Any] | None) -> str:
    """One markdown table row: the run, each task's main dev metric, their mean, time and memory."""
    cells = [f"{v:.4f}" if v is not None else "–" for v in scores]
    present = [v for v in scores if v is not None]
    cells.append(f"{statistics.fmean(present):.4f}" if len(present) == len(scores) else "–")
    if cost:
        cells += [f"{cost['train_seconds']:.0f}", f"{cost['peak_memory_mb'] or 0:.0f}"]
    return "| " + " | ".join([label, *cells]) + " |"


def _header(tasks: list[str], metrics: dict[str, str]) -> str:
    """A markdown table header: one column per task (with its main metric), mean, time, memory."""
    columns = ["run", *(f"{t} {metrics[t]}" for t in tasks), "mean", "train s", "peak MB"]
    return "| " + " | ".join(columns) + " |\n|" + "|".join(["---"] + ["---:"] * (len(columns) - 1)) + "|"


def format_tables(results: dict[str, Any]) -> str:
    lines: list[str] = []
    if "glue" in results:
        glue = results["glue"]
        tasks = list(glue["alone"])
        metrics = glue["together"]["main_metrics"]
        lines += [
            "",
            f"GLUE: together vs alone, {results['settings']['steps']} batches of every task",
            _header(tasks, metrics),
        ]
        lines.append(
            _row("together (round robin)", [_main_score(glue["together"], t) for t in tasks], glue["together"]["cost"])
        )
        alone_scores = [_main_score(glue["alone"][t], t) for t in tasks]
        alone_cost = {
            "train_seconds": sum(r["cost"]["train_seconds"] for r in glue["alone"].values()),
            "peak_memory_mb": max(r["cost"]["peak_memory_mb"] or 0 for r in glue["alone"].values()),
        }
        lines.append(_row("alone (5 runs, summed)", alone_scores, alone_cost))
        for task, run in glue.get("trainer", {}).items():
            scores = [_main_score(run, t) if t == task else None for t in tasks]
            lines.append(_row(f"Trainer, {task} alone", scores, run["cost"]))
    if "balancing" in results:
        runs = results["balancing"]
        first = next(iter(runs.values()))
        tasks = list(first["main_metrics"])
        lines += [
            "",
            f"GLUE, all-tasks steps: balancing methods, {results['settings']['steps']} steps",
            _header(tasks, first["main_metrics"]),
        ]
        for method, run in runs.items():
            lines.append(_row(method, [_main_score(run, t) for t in tasks], run["cost"]))
    if "conll" in results:
        conll = results["conll"]
        tasks = list(conll["together"]["main_metrics"])
        target = next(iter(conll["alone"]["main_metrics"]))
        lines += [
            "",
            f"CoNLL-2003: {target} alone vs with the others, {results['settings']['conll_steps']} batches of every task",
            _header(tasks, conll["together"]["main_metrics"]),
        ]
        lines.append(
            _row(
                "together (round robin)", [_main_score(conll["together"], t) for t in tasks], conll["together"]["cost"]
            )
        )
        lines.append(
            _row(
                f"{target} alone",
                [_main_score(conll["alone"], t) if t == target else None for t in tasks],
                conll["alone"]["cost"],
            )
        )
    lines.append("")
    lines.append(
        "dev: each task's main metric at the last step; mean: over the row's tasks (– when a row has not every"
        " task); train s: training time without evaluation; peak MB: peak resident memory of the process (on a"
        " GPU, allocated GPU memory); alone: the runs' summed time and largest peak"
    )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog="Parts: " + ", ".join(PARTS))
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS), help="Which parts (default all).")
    parser.add_argument("--steps", type=int, default=200, help="GLUE batches of every task (default 200).")
    parser.add_argument("--batch-size", type=int, default=16, help="Examples per task batch, GLUE (default 16).")
    parser.add_argument("--conll-steps", type=int, default=300, help="CoNLL batches of every task (default 300).")
    parser.add_argument(
        "--conll-batch-size", type=int, default=32, help="Sentences per task batch, CoNLL (default 32)."
    )
    parser.add_argument("--conll-target", default="ner", help="The CoNLL task trained alone (default ner).")
    parser.add_argument(
        "--methods",
        nargs="+",
        default=DEFAULT_METHODS,
        help=f"Balancing methods, each NAME or NAME:key=value,... with its options, e.g. cagrad:c=0.2 "
        f"(default {' '.join(DEFAULT_METHODS)}).",
    )
    parser.add_argument(
        "--trainer-task",
        default="mrpc",
        help="The GLUE task of the Trainer cross-check; 'none' skips it (default mrpc).",
    )
    parser.add_argument(
        "--optim",
        choices=["adamw_torch_fused", "adamw_torch"],
        default="adamw_torch_fused",
        help="AdamW kernel of every run, the Trainer's too (default adamw_torch_fused, train.optim's default).",
    )
    parser.add_argument("--glue-config", default="configs/glue.yaml")
    parser.add_argument("--conll-config", default="configs/conll.yaml")
    parser.add_argument(
        "--model", help="Encoder directory or Hub id (default: each config's model; --smoke: tiny random BERT)."
    )
    parser.add_argument("--output-dir", default="outputs/benchmarks/quality")
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="Read back finished runs of the same config instead of training them again.",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="2 steps of each run on a few examples, all in this process, to check the script works.",
    )
    parser.add_argument("--trainer-worker", help=argparse.SUPPRESS)  # internal: the Trainer run, from a spec file
    args = parser.parse_args(argv)
    if args.smoke:
        args.steps, args.conll_steps = 2, 2
    if "balancing" in args.parts and "equal" not in args.methods:
        parser.error("--methods must include 'equal': every method is compared with it")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.trainer_worker:
        trainer_worker(args.trainer_worker)
        return 0
    root = Path(args.output_dir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    runner = Runner(root, args.reuse, in_process=args.smoke)
    results: dict[str, Any] = machine_and_versions() | {"settings": vars(args) | {"output_dir": str(root)}}
    glue = _budget(read_config(args.glue_config), args.steps, args.batch_size, args.smoke)
    conll = _budget(read_config(args.conll_config), args.conll_steps, args.conll_batch_size, args.smoke)
    for config in (glue, conll):
        config["train"]["optim"] = args.optim
    model = args.model
    if args.smoke and not model:
        model = tiny_encoder(root / "tiny-bert")
    if model:
        glue["model"]["name_or_path"] = conll["model"]["name_or_path"] = model
    if "glue" in args.parts:
        trainer_task = None if args.trainer_task == "none" else args.trainer_task
        results["glue"] = glue_part(runner, glue, trainer_task, root)
    if "balancing" in args.parts:
        results["balancing"] = balancing_part(runner, glue, args.methods)
    if "conll" in args.parts:
        results["conll"] = conll_part(runner, conll, args.conll_target)
    root.mkdir(parents=True, exist_ok=True)
    (root / "results.json").write_text(json.dumps(results, indent=2))
    print(format_tables(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
