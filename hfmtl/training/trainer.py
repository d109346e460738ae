"""The multi-task training loop on Accelerate.

One optimizer step = one task (drawn by the `TaskSampler`, the same on every process) x
`gradient_accumulation_steps` micro-batches of that task. Accelerate owns devices, processes, mixed
precision, gradient accumulation and checkpoint I/O; this module owns the order of work, per-task
evaluation, the best-model choice and an exact resume.

Example:
    >>> trainer = MultiTaskTrainer(model, tasks, data, tokenizer, config, accelerator)  # doctest: +SKIP
    >>> trainer.train()                                                                # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from tqdm.auto import tqdm
from transformers import get_scheduler

from ..analysis import GradientSimilarityTracker, heatmap
from ..config import RunConfig
from ..model.adapters import count_parameters
from ..model.freezing import GradualUnfreezer, build_param_groups, freeze_encoder_parts
from ..publish.hub import TrainingPusher
from ..publish.model_card import write_model_card
from ..tasks import Task
from .checkpointing import TrainingState, resolve_resume_path, save_checkpoint, write_json_atomic
from .data import TaskData, build_eval_loader, build_train_loader
from .evaluation import evaluate_tasks, metric_directions
from .sampling import TaskSampler, steps_per_epoch
from .setup import compile_backend, flat_hparams, peak_memory_mb
from .steps import all_tasks_step, one_task_step, setup_balancing, step_tasks

logger = logging.getLogger("hfmtl")


class MultiTaskTrainer:
    """Trains a `MultiTaskModel` on several tasks with Accelerate.

    Args:
        model: the multi-task model (not yet prepared).
        tasks: task_name -> Task, after `setup`.
        data: task_name -> its tokenized `TaskData`.
        tokenizer: used by the collators.
        config: the run config (`train` and `sampling` sections are used here).
        accelerator: from `hfmtl.training.setup.build_accelerator`.
    """

    def __init__(
        self,
        model,
        tasks: dict[str, Task],
        data: dict[str, TaskData],
        tokenizer,
        config: RunConfig,
        accelerator: Accelerator,
    ):
        self.tasks, self.data, self.tokenizer = tasks, data, tokenizer
        self.config, self.args, self.accelerator = config, config.train, accelerator
        args = self.args
        self.output_dir = Path(args.output_dir)

        batch_sizes = {n: t.config.batch_size or args.per_device_train_batch_size for n, t in tasks.items()}
        sizes = {n: len(d.train) for n, d in data.items()}
        s = config.sampling
        self.sampler = TaskSampler(sizes, s.strategy, s.temperature, s.max_examples, s.weights, seed=args.seed)
        self.state = TrainingState(self.sampler)
        self.steps_per_epoch = steps_per_epoch(
            sizes, batch_sizes, accelerator.num_processes, args.gradient_accumulation_steps
        )
        self.total_steps = args.max_steps or math.ceil(args.num_train_epochs * self.steps_per_epoch)

        train_loaders = {
            name: build_train_loader(
                tasks[name],
                data[name].train,
                tokenizer,
                batch_sizes[name],
                seed=args.seed + i,
                group_by_length=args.train_sampling_strategy == "group_by_length",
                num_workers=args.dataloader_num_workers,
            )
            for i, name in enumerate(tasks)
        }
        self._samplers = {name: loader.sampler for name, loader in train_loaders.items()}
        eval_loaders = {
            name: build_eval_loader(
                tasks[name],
                d.eval_features,
                tokenizer,
                args.per_device_eval_batch_size,
                args.dataloader_num_workers,
            )
            for name, d in data.items()
            if d.eval_features is not None
        }

        # a main metric of unknown direction is an error now, not at the first evaluation
        self.greater_is_better = {name: tasks[name].greater_is_better for name in eval_loaders}
        if args.freezes_encoder_parts:
            frozen = freeze_encoder_parts(
                model, embeddings=args.freeze_embeddings, bottom_layers=args.freeze_layers, encoder=args.freeze_encoder
            )
            logger.info("frozen: %.2fM encoder parameters", frozen / 1e6)
        trainable, total = count_parameters(model)
        logger.info(
            "model: %s encoder%s, %.2fM trainable of %.2fM parameters (%.2f%%)",
            model.config.encoder.model_type,
            f" + {config.peft.config['peft_type']} adapters ({config.peft.mode})" if config.peft else "",
            trainable / 1e6,
            total / 1e6,
            100 * trainable / total,
        )
        self.unfreezer = (
            GradualUnfreezer(model, args.gradual_unfreezing_steps) if args.gradual_unfreezing_steps else None
        )
        setup_balancing(self, model)
        param_groups = build_param_groups(
            model,
            learning_rate=args.learning_rate,
            weight_decay=args.weight_decay,
            layerwise_lr_decay=args.layerwise_lr_decay,
            head_learning_rate=args.head_learning_rate,
        )
        if self.balancer_params:  # a learned loss weighting trains with the model: no weight decay, its own lr
            lr = getattr(self.balancer, "lr", args.learning_rate)
            param_groups.append({"params": self.balancer_params, "weight_decay": 0.0, "lr": lr, "name": "balancer"})
        self.optimizer = torch.optim.AdamW(
            param_groups,
            lr=args.learning_rate,
            weight_decay=args.weight_decay,
            betas=(args.adam_beta1, args.adam_beta2),
            eps=args.adam_epsilon,
            fused=args.optim == "adamw_torch_fused" or None,  # None: torch picks foreach or the loop
        )
        warmup = args.num_warmup_steps(self.total_steps)
        # Not passed through `prepare`: Accelerate would step it once per process per step; here it
        # steps once per real optimizer step, so the schedule is the same on 1 or N processes.
        self.scheduler = get_scheduler(args.lr_scheduler_type, self.optimizer, warmup, self.total_steps)

        names = list(train_loaders)
        eval_names = list(eval_loaders)
        prepared = accelerator.prepare(model, self.optimizer, *train_loaders.values(), *eval_loaders.values())
        self.model, self.optimizer = prepared[0], prepared[1]
        self.train_loaders = dict(zip(names, prepared[2 : 2 + len(names)]))
        self.eval_loaders = dict(zip(eval_names, prepared[2 + len(names) :]))
        self.similarity = None
        if args.gradient_similarity_steps and accelerator.is_main_process:
            # fixed probe batches (a loader of their own: the training loaders' positions are untouched)
            self.similarity = GradientSimilarityTracker(names)
            self._probes = {
                name: next(
                    iter(
                        build_train_loader(
                            tasks[name], data[name].train, tokenizer, batch_sizes[name], args.seed + 7919, False
                        )
                    )
                )
                for name in names
            }
        accelerator.register_for_checkpointing(self.scheduler, self.state)
        if self.balancer is not None:
            self.balancer.to(accelerator.device)
            accelerator.register_for_checkpointing(self.balancer)
        self._iterators: dict[str, Iterator] = {}
        self._loss_sums = torch.zeros(len(names), device=accelerator.device)
        self._loss_counts = torch.zeros(len(names), device=accelerator.device)
        self._task_index = {name: i for i, name in enumerate(names)}
        self.history: list[dict[str, Any]] = []
        self._eval_seconds = 0.0
        self.pusher = TrainingPusher(args) if args.push_to_hub and accelerator.is_main_process else None

    # --- data --------------------------------------------------------------------------------------

    def _next_batch(self, task_name: str) -> dict[str, torch.Tensor]:
        """The task's next batch; at the end of its data, a new reshuffled pass starts."""
        position = self.state.positions[task_name]
        iterator = self._iterators.get(task_name)
        if iterator is None:
            iterator = self._iterators[task_name] = self._start_pass(task_name, position)
        try:
            batch = next(iterator)
        except StopIteration:
            position["epoch"] += 1
            position["batches"] = 0
            iterator = self._iterators[task_name] = self._start_pass(task_name, position)
            batch = next(iterator)
        position["batches"] += 1
        return batch

    def _start_pass(self, task_name: str, position: dict[str, int]) -> Iterator:
        self._samplers[task_name].use_epoch(position["epoch"])
        loader = self.train_loaders[task_name]
        if position["batches"]:  # resuming mid-pass: skip what was used (indices only, no collation)
            loader = self.accelerator.skip_first_batches(loader, position["batches"])
        return iter(loader)

    # --- training ----------------------------------------------------------------------------------

    def train(self) -> list[dict[str, Any]]:
        """Run the training; returns the evaluation history (also in ``metrics.json``)."""
        acc, args, state = self.accelerator, self.args, self.state
        resume = resolve_resume_path(args.resume_from_checkpoint, self.output_dir)
        if resume is not None:
            acc.load_state(str(resume))
            self._iterators.clear()
            self._load_history()
            logger.info("Resumed from %s at step %d", resume, state.global_step)
        acc.init_trackers("hfmtl", config=flat_hparams(self.config.to_dict()))
        logger.info(
            "Training %d steps (%d per epoch) on tasks %s, sampling %s",
            self.total_steps,
            self.steps_per_epoch,
            list(self.tasks),
            {k: round(v, 4) for k, v in self.sampler.probabilities().items()},
        )
        progress = tqdm(
            total=self.total_steps,
            initial=state.global_step,
            desc="train",
            disable=not acc.is_local_main_process,
            dynamic_ncols=True,
        )
        start_time, last_eval_step = time.time(), None
        self.model.train()
        while state.global_step < self.total_steps:
            if self.config.balancing.step == "all_tasks":
                self._train_all_tasks_step(step_tasks(self, state.global_step))
            else:
                self._train_step(self.sampler.next_task())
            state.global_step += 1
            progress.update(1)
            step = state.global_step
            if step % args.logging_steps == 0 or step == self.total_steps:
                logs = self._log_train(step)
                progress.set_postfix({k.split("/")[1]: f"{v:.3f}" for k, v in logs.items() if k.endswith("/loss")})
            if self.similarity is not None and step % args.gradient_similarity_steps == 0:
                self._record_similarity(step)
            if args.eval_steps and step % args.eval_steps == 0:
                self._evaluate_and_track(step)
                last_eval_step = step
            if args.save_steps and step % args.save_steps == 0:
                save_checkpoint(acc, self.output_dir, step, args.save_total_limit)
        progress.close()
        if self.eval_loaders and last_eval_step != state.global_step:
            self._evaluate_and_track(state.global_step)
        self._train_runtime = time.time() - start_time
        self._finish()
        return self.history

    def _train_step(self, task_name: str) -> None:
        one_task_step(self, task_name)

    def _train_all_tasks_step(self, task_names: list[str]) -> None:
        all_tasks_step(self, task_names)

    def _record_losses(self, losses: dict[str, torch.Tensor]) -> None:
        # summed on device: no host sync per step; read once per logging window
        for task_name, loss in losses.items():
            index = self._task_index[task_name]
            self._loss_sums[index] += loss.detach().float()
            self._loss_counts[index] += 1

    def _record_similarity(self, step: int) -> None:
        device = self.accelerator.device
        probes = {n: {k: v.to(device) for k, v in b.items()} for n, b in self._probes.items()}
        with self.accelerator.autocast():
            matrix = self.similarity.record(step, self.unwrapped_model(), probes)
        logger.info("gradient cosine at step %d: %s", step, [[round(float(v), 3) for v in row] for row in matrix])

    def _log_train(self, step: int) -> dict[str, float]:
        sums = self.accelerator.reduce(self._loss_sums.clone(), reduction="sum")
        counts = self.accelerator.reduce(self._loss_counts.clone(), reduction="sum")
        self._loss_sums.zero_()
        self._loss_counts.zero_()
        logs = {
            f"train/{name}/loss": float(sums[i] / counts[i]) for name, i in self._task_index.items() if counts[i] > 0
        }
        logs.update({f"train/{name}/weight": float(weight) for name, weight in self.last_weights.items()})
        logs["train/learning_rate"] = float(self.scheduler.get_last_lr()[0])
        self.accelerator.log(logs, step=step)
        logger.info("step %d: %s", step, {k: round(v, 5) for k, v in logs.items()})
        return logs

    # --- evaluation ----------------------------------------------------------------------------------

    def evaluate(self) -> dict[str, float]:
        """Every task's eval metrics now (see `evaluate_tasks`)."""
        return evaluate_tasks(self.model, self.tasks, self.data, self.eval_loaders, self.accelerator)

    def _evaluate_and_track(self, step: int) -> dict[str, float]:
        started = time.time()
        results = self.evaluate()
        self._eval_seconds += time.time() - started
        self.accelerator.log(results, step=step)
        logger.info("eval at step %d: %s", step, {k: round(v, 4) for k, v in results.items()})
        entry = {"step": step, "epoch": round(step / self.steps_per_epoch, 4), **results}
        self.history.append(entry)
        score = results.get("eval/mean")
        if score is not None and (self.state.best_metric is None or score > self.state.best_metric):
            self.state.best_metric, self.state.best_step = score, step
            if self.args.load_best_model_at_end:
                self._save_model_atomic(self.output_dir / "best")
        self._write_metrics()
        if self.state.best_step == step and self.pusher is not None:
            self.pusher.push_best(self.output_dir, self.tokenizer)
        return results

    # --- output ----------------------------------------------------------------------------------------

    def unwrapped_model(self):
        """The bare `MultiTaskModel` (no DDP wrapper, no torch.compile wrapper): what is saved and loaded."""
        return self.accelerator.unwrap_model(self.model, keep_torch_compile=False)

    def _save_model_atomic(self, directory: Path) -> None:
        acc = self.accelerator
        state_dict = acc.get_state_dict(self.model)  # collective under some backends: every process
        if acc.is_main_process:
            tmp = directory.with_name(directory.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            self.unwrapped_model().save_pretrained(tmp, state_dict=state_dict)
            shutil.rmtree(directory, ignore_errors=True)
            os.replace(tmp, directory)
        acc.wait_for_everyone()

    def _write_metrics(self) -> None:
        if not self.accelerator.is_main_process:
            return
        data = {
            "history": self.history,
            "best": {"step": self.state.best_step, "eval/mean": self.state.best_metric},
            "main_metrics": {name: task.main_metric for name, task in self.tasks.items()},
            "greater_is_better": metric_directions(
                self.tasks, list(dict.fromkeys(k for e in self.history for k in e if k.startswith("eval/")))
            ),
        }
        if hasattr(self, "_train_runtime"):
            data["train"] = {
                "steps": self.state.global_step,
                "runtime_seconds": round(self._train_runtime, 1),
                "evaluation_seconds": round(self._eval_seconds, 1),
                "peak_memory_mb": round(peak_memory_mb(self.accelerator.device)),
                # what the run really used (the config may leave these to the launcher)
                "mixed_precision": self.accelerator.mixed_precision,
                "torch_compile": compile_backend(self.accelerator),
                "num_processes": self.accelerator.num_processes,
            }
        write_json_atomic(self.output_dir / "metrics.json", data)

    def _load_history(self) -> None:
        path = self.output_dir / "metrics.json"
        if path.is_file():
            history = json.loads(path.read_text()).get("history", [])
            self.history = [e for e in history if e["step"] <= self.state.global_step]

    def _finish(self) -> None:
        """Put the final weights (the best evaluation's, if asked) in the model and in output_dir."""
        acc = self.accelerator
        best = self.output_dir / "best"
        if self.args.load_best_model_at_end and (best / "config.json").is_file():
            self.unwrapped_model().load_weights(best)
            logger.info(
                "Loaded the best model (step %s, eval/mean %.4f)",
                self.state.best_step,
                self.state.best_metric,
            )
        self.save_model(self.output_dir)
        if acc.is_main_process:
            shutil.rmtree(best, ignore_errors=True)
        self._write_metrics()
        if acc.is_main_process:
            write_model_card(self.output_dir)
        if self.similarity is not None and self.similarity.steps:
            self.similarity.save(self.output_dir / "gradient_similarity.json")
            heatmap(
                self.similarity.mean,
                self.similarity.task_names,
                self.output_dir / "gradient_similarity.png",
                title=f"gradient cosine, mean of steps {self.similarity.steps[0]}-{self.similarity.steps[-1]}",
            )
        if self.pusher is not None:
            self.pusher.push_final(self.output_dir)
        # trackers end with the stage; the process group stays up for the next stage (the recipe calls
        # `end_training` once, at the very end)
        for tracker in acc.trackers:
            tracker.finish()

    def save_model(self, directory: str | Path) -> None:
        """`save_pretrained` of the model and the tokenizer into `directory` (main process writes)."""
        acc = self.accelerator
        state_dict = acc.get_state_dict(self.model)
        if acc.is_main_process:
            self.unwrapped_model().save_pretrained(directory, state_dict=state_dict)
            self.tokenizer.save_pretrained(directory)
        acc.wait_for_everyone()
