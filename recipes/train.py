#!/usr/bin/env python
"""Multi-task training of one shared encoder with one head per task.

    accelerate launch recipes/train.py --config configs/glue.yaml [section.key=value ...]
    python recipes/train.py --config configs/tiny.yaml train.max_steps=20

Reads top to bottom: config -> Accelerator -> tasks -> data -> model (+ init_from, + PEFT) -> the
callbacks the config asks for -> the output directory's lock -> trainer -> the resume, checked against
the checkpoint's config -> saved model. The output directory gets the model
(`save_pretrained` + tokenizer), `config.yaml` (the resolved run config), `metrics.json` (every
evaluation of every task), `README.md` (the model card), `train.log` and `checkpoints/`.
A config with `stages:` runs this once per stage, each stage in `<output_dir>/<stage>/` and starting
from the stage before it (see hfmtl/config/stages.py). With ``train.resume_from_checkpoint=latest`` one
command starts, resumes, or -- for a finished run -- leaves the run as it is (hfmtl/training/resume.py).
Reload with ``import hfmtl; transformers.AutoModel.from_pretrained(output_dir)``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from accelerate.utils import set_seed

from hfmtl import MultiTaskModel, build_task, load_config
from hfmtl.analysis.callbacks import GradientSimilarityCallback
from hfmtl.cli.args import add_config_arguments, parse_with_config
from hfmtl.config import RunConfig, save_config
from hfmtl.config.stages import plan_stages, write_stages_summary
from hfmtl.errors import exit_status_of
from hfmtl.model.adapters import add_adapters
from hfmtl.model.backbone import enable_gradient_checkpointing
from hfmtl.model.pad_token import set_pad_token_id
from hfmtl.model.transfer import initialize_from
from hfmtl.publish.callbacks import HubPushCallback, ModelCardCallback
from hfmtl.training.callbacks import TrackersCallback, TrainerCallback
from hfmtl.training.data import load_tokenizer, prepare_task_data
from hfmtl.training.launcher import die_with_launcher
from hfmtl.training.resume_contract import check_finished_run
from hfmtl.training.run_dir import start_over
from hfmtl.training.run_lock import hold_run_lock
from hfmtl.training.setup import build_accelerator, check_output_dir, logger, setup_logging
from hfmtl.training.streaming import is_stream
from hfmtl.training.trainer import MultiTaskTrainer

# A worker of `accelerate launch` / torchrun ends when the launcher is killed, instead of training on as
# an orphan that holds the run's lock and its devices (hfmtl/training/launcher.py). Nothing to do
# without a launcher.
die_with_launcher()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Train one encoder on several tasks (hfmtl).",
        epilog="Example: accelerate launch recipes/train.py --config configs/glue.yaml train.max_steps=500",
    )
    add_config_arguments(parser)
    parser.add_argument(
        "--cpu",
        action="store_true",
        help="Run on the CPU even if a GPU is present (with several processes: gloo DDP on CPU).",
    )
    return parse_with_config(parser, argv)


def run(args: argparse.Namespace, callbacks: Sequence[TrainerCallback] = ()) -> MultiTaskTrainer:
    """The whole run, stage by stage; returns the last stage's trainer (its model holds the final weights).
    `callbacks` join every stage's own (a test's crash, a benchmark's clock)."""
    # 1. Config: typed and validated (every stage of it) before anything is loaded or written.
    config = load_config(args.config, args.overrides)
    check_output_dir(config)
    stages = plan_stages(config)

    trainer = accelerator = None
    for stage in stages:
        if stage.skip:  # finished: final, as long as the config is the one it was trained with
            check_finished_run(stage.config, stage.output_dir)
            if stage.name is None:
                print(f"{stage.output_dir} holds a finished run: nothing to train, nothing written")
            else:
                print(f"Stage {stage.name!r} finished in an earlier run: skipped ({stage.output_dir})")
            continue
        # 2. Accelerate owns devices, processes, precision and compilation: the config's settings, else
        #    the launcher's (one Accelerator per stage: its own trackers, checkpoints and DDP settings;
        #    the process group lives on until the end). Logging starts with it.
        accelerator = build_accelerator(stage.config, cpu=args.cpu)
        if stage.name is not None:
            logger.info("=== stage %r: tasks %s ===", stage.name, list(stage.config.tasks))
        trainer = train_stage(stage.config, accelerator, callbacks)
    if config.stages is not None and (accelerator is None or accelerator.is_main_process):
        # a re-run of a finished staged run writes nothing (unless a kill came before the summary)
        if any(not stage.skip for stage in stages) or not (Path(config.train.output_dir) / "metrics.json").is_file():
            write_stages_summary(config, stages)
        print(f"Stages finished; the final model is in {stages[-1].output_dir}")
    if accelerator is not None:
        accelerator.end_training()
    return trainer


def callbacks_for(config: RunConfig) -> list[TrainerCallback]:
    """The side jobs of a training, from its config. At the end of the training they run in this order:
    the card and the plot are in the output directory before the push uploads it, and the trackers
    finish last."""
    train = config.train
    callbacks: list[TrainerCallback] = [ModelCardCallback()]
    if train.gradient_similarity_steps:
        callbacks.append(GradientSimilarityCallback(train.gradient_similarity_steps))
    if train.push_to_hub:
        callbacks.append(HubPushCallback(train))
    if train.report_to:
        callbacks.append(TrackersCallback())
    return callbacks


def train_stage(config: RunConfig, accelerator, callbacks: Sequence[TrainerCallback] = ()) -> MultiTaskTrainer:
    """One training: the tasks of `config` from its encoder (or `model.init_from`) to a saved model;
    `callbacks` run after the config's own (`callbacks_for`)."""
    output_dir = Path(config.train.output_dir)
    set_seed(config.train.seed)

    # 3. Tasks from the registry, and their data: loaded, checked and tokenized once (cached by
    #    `datasets`; the main process tokenizes first, the others read its cache). A tokenizer without a
    #    pad token (most decoder models') pads with its end-of-sequence token.
    tokenizer = load_tokenizer(config.model)
    tasks = {name: build_task(name, task_config) for name, task_config in config.tasks.items()}
    data = {
        name: prepare_task_data(task, tokenizer, config.model.max_length, accelerator.main_process_first)
        for name, task in tasks.items()
    }
    for name, task_data in data.items():
        n_eval = len(task_data.eval_features) if task_data.eval_features is not None else 0
        logger.info(
            "task %s (%s): %s train / %d eval features",
            name,
            tasks[name].type_name,
            "streamed" if is_stream(task_data.train) else len(task_data.train),  # a stream is not counted
            n_eval,
        )

    # 4. The model: the pretrained encoder plus one fresh head per task, described by the tasks;
    #    then the weights of a checkpoint to start from, then PEFT adapters on the encoder.
    model = MultiTaskModel.from_encoder(
        config.model.name_or_path,
        {name: task.head_spec() for name, task in tasks.items()},
        pooling=config.model.pooling,
        classifier_dropout=config.model.classifier_dropout,
        encoder_only=config.model.encoder_only,
        revision=config.model.revision,
    )
    set_pad_token_id(model, tokenizer)  # the encoder's config records the pad token the tokenizer got
    if config.model.init_from:
        initialize_from(model, config.model.init_from, config.model.init_heads)
    if config.peft is not None:
        add_adapters(
            model,
            config.peft.config,
            config.peft.mode,
            base_model=config.model.init_from or config.model.name_or_path,
            total_steps=config.train.max_steps or 0,
        )
    if config.train.gradient_checkpointing:
        enable_gradient_checkpointing(model)

    # 5. One run at a time in output_dir: a lock, held to the end (hfmtl/training/run_lock.py). Then the
    #    trainer, and the checkpoint to resume: accepted only if it continues this same training -- a
    #    changed learning rate, task or seed is an error here, before anything is written
    #    (hfmtl/training/resume.py). A fresh start with overwrite_output_dir first removes an older
    #    run's files (hfmtl/training/run_dir.py).
    side_jobs = [*callbacks_for(config), *callbacks]
    with hold_run_lock(output_dir, accelerator):
        trainer = MultiTaskTrainer(model, tasks, data, tokenizer, config, accelerator, side_jobs)
        resume_point = trainer.resume()
        if accelerator.is_main_process:
            if config.train.overwrite_output_dir and not resume_point.resumed:
                start_over(output_dir)
            # 6. Everything checked: now the output directory is written.
            save_config(config, output_dir / "config.yaml")
        accelerator.wait_for_everyone()
        setup_logging(accelerator, output_dir / "train.log")

        # 7. Train: sample a task per step, evaluate every task every eval_steps, checkpoint, save; then the
        #    side jobs: the model card, the gradient-similarity plot, the Hub push, the trackers' end.
        history = trainer.train()

    # 8. Report the evaluation of the saved weights.
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
    sys.exit(exit_status_of(main))
