#!/usr/bin/env python
"""Multi-task training of one shared encoder with one head per task.

    accelerate launch recipes/train.py --config configs/glue.yaml [section.key=value ...]
    python recipes/train.py --config configs/tiny.yaml train.max_steps=20

Reads top to bottom: config -> Accelerator -> tasks -> data -> model -> trainer -> saved model.
The output directory gets the model (`save_pretrained` + tokenizer), `config.yaml` (the resolved run
config), `metrics.json` (every evaluation of every task), `train.log` and `checkpoints/`.
Reload with ``import hfmtl; transformers.AutoModel.from_pretrained(output_dir)``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from accelerate.utils import set_seed

from hfmtl import HfmtlError, MultiTaskModel, build_task, load_config
from hfmtl.config import save_config
from hfmtl.data import load_tokenizer, prepare_task_data
from hfmtl.trainer import MultiTaskTrainer, build_accelerator, check_output_dir, logger, setup_logging


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Train one encoder on several tasks (hfmtl).",
        epilog="Example: accelerate launch recipes/train.py --config configs/glue.yaml train.max_steps=500",
    )
    parser.add_argument("--config", required=True, help="YAML run config (see configs/).")
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="section.key=value",
        help="Override config values, e.g. train.learning_rate=3e-5 tasks.rte.batch_size=16",
    )
    parser.add_argument(
        "--cpu",
        action="store_true",
        help="Run on the CPU even if a GPU is present (with several processes: gloo DDP on CPU).",
    )
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> MultiTaskTrainer:
    """The whole run; returns the trainer (its model holds the final weights)."""
    # 1. Config: typed and validated before anything is loaded or written.
    config = load_config(args.config, args.overrides)
    check_output_dir(config)
    output_dir = Path(config.train.output_dir)

    # 2. Accelerate owns devices, processes and precision.
    accelerator = build_accelerator(config, cpu=args.cpu)
    setup_logging(accelerator)
    set_seed(config.train.seed)

    # 3. Tasks from the registry, and their data: loaded, checked and tokenized once (cached by
    #    `datasets`; the main process tokenizes first, the others read its cache).
    tokenizer = load_tokenizer(config.model)
    tasks = {name: build_task(name, task_config) for name, task_config in config.tasks.items()}
    data = {
        name: prepare_task_data(task, tokenizer, config.model.max_length, accelerator.main_process_first)
        for name, task in tasks.items()
    }
    for name, task_data in data.items():
        n_eval = len(task_data.eval_features) if task_data.eval_features is not None else 0
        logger.info(
            "task %s (%s): %d train / %d eval features",
            name,
            tasks[name].type_name,
            len(task_data.train),
            n_eval,
        )

    # 4. The model: the pretrained encoder plus one fresh head per task, described by the tasks.
    model = MultiTaskModel.from_encoder(
        config.model.name_or_path,
        {name: task.head_spec() for name, task in tasks.items()},
        pooling=config.model.pooling,
        classifier_dropout=config.model.classifier_dropout,
        revision=config.model.revision,
    )
    logger.info(
        "model: %s encoder, %.1fM parameters",
        model.config.encoder.model_type,
        sum(p.numel() for p in model.parameters()) / 1e6,
    )

    # 5. Everything checked: now the output directory is written.
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, output_dir / "config.yaml")
    accelerator.wait_for_everyone()
    setup_logging(accelerator, output_dir / "train.log")

    # 6. Train: sample a task per step, evaluate every task every eval_steps, checkpoint, save.
    trainer = MultiTaskTrainer(model, tasks, data, tokenizer, config, accelerator)
    history = trainer.train()

    # 7. Report the evaluation of the saved weights.
    if history and accelerator.is_main_process:
        saved_step = trainer.state.best_step if config.train.load_best_model_at_end else history[-1]["step"]
        saved = next((e for e in history if e["step"] == saved_step), history[-1])
        print(f"\nEvaluation of the saved model (step {saved['step']} of {trainer.state.global_step}):")
        for key, value in saved.items():
            if key.startswith("eval/"):
                print(f"  {key:<40} {value:.4f}")
    if accelerator.is_main_process:
        print(f"Model saved to {output_dir}")
    return trainer


def main(argv: list[str] | None = None) -> int:
    run(parse_args(argv))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except HfmtlError as err:  # a user error: one line, no traceback, non-zero exit
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
