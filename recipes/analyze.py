#!/usr/bin/env python
"""How the tasks of a config relate, measured on an encoder: transferability, gradients, affinity.

    python recipes/analyze.py --config configs/glue.yaml --output outputs/analysis/glue
    hfmtl analyze configs/glue.yaml --model outputs/glue --output outputs/analysis/glue-trained
    hfmtl analyze configs/rte_transfer.yaml --target rte --sources pretrained=../shared/models/all-MiniLM-L6-v2 \
        intermediate=outputs/rte_transfer/intermediate --output outputs/analysis/rte

Reads top to bottom: config -> tasks and data -> model (the config's pretrained encoder with fresh
heads, or a trained model with --model) -> for each task, LogME / H-score of its labels on the frozen
features -> the task x task cosine of gradients on the shared parameters, over a few batches -> TAG's
lookahead affinity over the same batches -> optionally, candidate source encoders ranked for a target.
Writes ``analysis.json`` and the heatmaps (``gradient_cosine.png``, ``lookahead_affinity.png``) into
--output; docs/task_relatedness.md explains how to read them.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from contextlib import nullcontext
from pathlib import Path

import transformers
from accelerate.utils import set_seed

from hfmtl import MultiTaskModel, build_task, load_config
from hfmtl.analysis import (
    GradientSimilarityTracker,
    extract_features,
    h_score,
    heatmap,
    logme,
    lookahead_affinity,
    rank_source_encoders,
)
from hfmtl.cli.args import add_config_arguments, parse_with_config
from hfmtl.errors import ConfigError, exit_status_of
from hfmtl.tasks import Unsupported
from hfmtl.training.data import build_train_loader, load_tokenizer, prepare_task_data
from hfmtl.training.streaming import build_stream_loader, is_stream


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Measure how the tasks of a config relate (hfmtl).",
        epilog="Example: hfmtl analyze configs/glue.yaml --output outputs/analysis/glue",
    )
    add_config_arguments(parser, "YAML run config naming the tasks and their data")
    parser.add_argument(
        "--model", help="A trained hfmtl model to analyse (default: the config's encoder, fresh heads)."
    )
    parser.add_argument("--output", required=True, help="Directory for analysis.json and the heatmaps.")
    parser.add_argument("--batches", type=int, default=4, help="Batches per task for gradients and affinity.")
    parser.add_argument("--max-examples", type=int, default=1000, help="Eval examples per task for LogME.")
    parser.add_argument(
        "--lookahead-lr",
        type=float,
        default=0.1,
        help="SGD step size of the lookahead affinity (default 0.1, for a pretrained encoder with fresh heads: "
        "with a fine-tuning learning rate such as 5e-5 one plain SGD step barely moves any loss; Adam's steps are "
        "far larger than lr x gradient). For an already trained --model take about 0.001: 0.1 overshoots its "
        "minimum and every loss rises (docs/task_relatedness.md).",
    )
    parser.add_argument("--target", help="Rank --sources for this task (LogME of its labels on each encoder).")
    parser.add_argument("--sources", nargs="*", default=[], metavar="NAME=PATH", help="Candidate source encoders.")
    return parse_with_config(parser, argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    config = load_config(args.config, args.overrides)
    if args.batches < 1 or args.max_examples < 1 or not args.lookahead_lr > 0:
        raise ConfigError("--batches and --max-examples must be at least 1, and --lookahead-lr above 0")
    if args.target is not None and args.target not in config.tasks:
        raise ConfigError(f"--target {args.target!r} is not a task of the config; tasks are {sorted(config.tasks)}")
    sources = dict(_name_and_path(item) for item in args.sources)
    output = Path(args.output)
    set_seed(config.train.seed)
    transformers.utils.logging.set_verbosity_error()  # load reports of the candidate encoders are noise here

    # 1. Tasks and their data (train batches for gradients; eval examples for the feature scores).
    tokenizer = load_tokenizer(config.model)
    tasks = {name: build_task(name, task_config) for name, task_config in config.tasks.items()}
    data = {
        name: prepare_task_data(task, tokenizer, config.model.max_length, nullcontext) for name, task in tasks.items()
    }

    # 2. The model: a trained one, or the pretrained encoder with fresh (seeded) heads.
    if args.model:
        model = MultiTaskModel.from_pretrained(args.model)
        missing = sorted(set(tasks) - set(model.config.tasks))
        if missing:
            raise ConfigError(f"--model has no head for task(s) {missing}; it has {sorted(model.config.tasks)}")
    else:
        specs = {name: task.head_spec() for name, task in tasks.items()}
        model = MultiTaskModel.from_encoder(config.model.name_or_path, specs, pooling=config.model.pooling)
    model.eval()

    # 3. Transferability of the frozen features to each task (no training): LogME, and H-score for
    #    classification. A task type without a label per example, token or choice (QA) is skipped.
    transferability = {}
    for name, task in tasks.items():
        try:
            type(task).feature_unit()
        except Unsupported as why:
            print(f"{name:<12} skipped: {why}")
            continue
        feats = extract_features(model, task, data[name].eval_features, tokenizer, max_examples=args.max_examples)
        scores = {"logme": logme(feats.features, feats.labels, regression=feats.regression), "unit": feats.unit}
        if not feats.regression:
            scores["h_score"] = h_score(feats.features, feats.labels)
        transferability[name] = scores
        print(
            f"{name:<12} LogME {scores['logme']:8.4f}"
            + (f"  H-score {scores['h_score']:8.4f}" if "h_score" in scores else "")
        )

    # 4. The same few batches of every task for the gradient cosine and the lookahead affinity.
    groups = [{} for _ in range(args.batches)]
    for index, (name, task) in enumerate(tasks.items()):
        batch_size = task.config.batch_size or config.train.per_device_train_batch_size
        if is_stream(data[name].train):  # its first batches, in stream order
            loader = build_stream_loader(task, data[name].train, tokenizer, batch_size, config.train)
        else:
            loader = build_train_loader(task, data[name].train, tokenizer, batch_size, config.train.seed + index, False)
        batches = itertools.cycle(loader)  # a task with fewer batches than --batches reuses its own
        for group in groups:
            group[name] = next(batches)
    tracker = GradientSimilarityTracker(list(tasks))
    for step, group in enumerate(groups):
        tracker.record(step, model, group)
    affinity = lookahead_affinity(model, groups, learning_rate=args.lookahead_lr)

    # 5. Candidate source encoders for a target, best first.
    ranking = None
    if args.target and sources:
        target = args.target
        ranking = rank_source_encoders(
            sources, tasks[target], data[target].eval_features, tokenizer, max_examples=args.max_examples
        )
        print(f"sources for {target} by LogME: " + ", ".join(f"{name} {score:.4f}" for name, score in ranking))

    # 6. Everything written down.
    output.mkdir(parents=True, exist_ok=True)
    names = list(tasks)
    heatmap(tracker.mean, names, output / "gradient_cosine.png", title="gradient cosine (shared parameters)")
    heatmap(
        affinity.values,
        affinity.sources,
        output / "lookahead_affinity.png",
        col_labels=affinity.targets,
        title="lookahead affinity: step on row, loss of column",
        xlabel="target",
        ylabel="source",
    )
    result = {
        "model": args.model or config.model.name_or_path,
        "lookahead_lr": args.lookahead_lr,
        "tasks": names,
        "transferability": transferability,
        "gradient_cosine": tracker.to_dict(),
        "lookahead_affinity": affinity.to_dict(),
        "source_ranking": None if ranking is None else {"target": args.target, "logme": dict(ranking)},
    }
    (output / "analysis.json").write_text(json.dumps(result, indent=2))
    print("gradient cosine (mean over batches):")
    for name, row in zip(names, tracker.mean):
        print(f"  {name:<12}" + " ".join(f"{v:6.2f}" for v in row))
    print(f"Written to {output}")
    return 0


def _name_and_path(item: str) -> tuple[str, str]:
    name, sep, path = item.partition("=")
    if not sep or not name or not path:
        raise ConfigError(f"--sources {item!r} must look like NAME=PATH (e.g. pretrained=../shared/models/x)")
    return name, path


if __name__ == "__main__":
    sys.exit(exit_status_of(main))
