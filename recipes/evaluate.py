#!/usr/bin/env python
"""Evaluate a saved multi-task model on the eval splits of the tasks in a config.

    python recipes/evaluate.py outputs/glue --config configs/glue.yaml [section.key=value ...]
    accelerate launch recipes/evaluate.py outputs/glue --config configs/glue.yaml

Every task of the config must have a head in the model; labels are taken from the model's heads so
that data is encoded exactly as in training. Prints a table and writes ``eval_results.json`` into the
model directory (or `--output`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from transformers import AutoTokenizer

from hfmtl import MultiTaskModel, build_task, load_config
from hfmtl.cli.args import add_config_arguments, parse_with_config
from hfmtl.errors import ConfigError, exit_status_of
from hfmtl.model.backbone import check_model_path
from hfmtl.training.data import build_eval_loader, prepare_task_data
from hfmtl.training.evaluation import evaluate_tasks
from hfmtl.training.setup import build_accelerator


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Evaluate a saved hfmtl model on its tasks' eval splits.")
    parser.add_argument("model", help="A saved hfmtl model directory (or Hub id).")
    add_config_arguments(parser, "YAML run config naming the tasks and their data")
    parser.add_argument("--output", help="Where to write the results JSON (default: MODEL/eval_results.json).")
    parser.add_argument("--cpu", action="store_true", help="Run on the CPU even if a GPU is present.")
    return parse_with_config(parser, argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    config = load_config(args.config, args.overrides)
    accelerator = build_accelerator(config, cpu=args.cpu)

    # The saved model and its tokenizer; every configured task needs a head in it.
    model_path = check_model_path(args.model, "model")
    try:
        model = MultiTaskModel.from_pretrained(model_path)
        tokenizer = AutoTokenizer.from_pretrained(model_path)
    except OSError as err:  # not a saved model directory, or a Hub id that cannot be reached
        raise ConfigError(f"model {args.model!r} cannot be loaded: {err}") from err
    missing = sorted(set(config.tasks) - set(model.config.tasks))
    if missing:
        raise ConfigError(f"the model has no head for task(s) {missing}; it has {sorted(model.config.tasks)}")

    # Eval data only, encoded with the labels the heads were trained on.
    tasks = {}
    for name, task_config in config.tasks.items():
        tasks[name] = build_task(name, task_config)
        tasks[name].adopt_head_spec(model.config.tasks[name])
    data = {
        name: prepare_task_data(task, tokenizer, config.model.max_length, accelerator.main_process_first, train=False)
        for name, task in tasks.items()
    }
    loaders = {
        name: build_eval_loader(tasks[name], d.eval_features, tokenizer, config.train.per_device_eval_batch_size)
        for name, d in data.items()
    }
    model, *prepared = accelerator.prepare(model, *loaders.values())
    results = evaluate_tasks(model, tasks, data, dict(zip(loaders, prepared)), accelerator)

    if accelerator.is_main_process:
        for key, value in results.items():
            print(f"{key:<40} {value:.4f}")
        output = Path(args.output) if args.output else Path(args.model) / "eval_results.json"
        output.write_text(json.dumps(results, indent=2))
        print(f"Results written to {output}")
    return 0


if __name__ == "__main__":
    sys.exit(exit_status_of(main))
