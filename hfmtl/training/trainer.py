"""The multi-task training loop on Accelerate, top to bottom.

One optimizer step trains one task (drawn by the `TaskSampler`, the same on every process), or every task
of the step under a balancing method: `StepRunner.step` (steps.py). Accelerate owns devices, processes,
mixed precision, gradient accumulation and checkpoint I/O. This module owns the order of work: resume,
steps, loss logging, per-task evaluation, the best-model choice, checkpoints and the final save. The
resume and its contract are resume.py's, the end of the run (in an order a kill may interrupt anywhere)
finishing.py's. What happens around that order (the model card, Hub pushes, gradient similarity,
trackers) are callbacks (callbacks.py), which recipes/train.py picks from the config.

Example:
    >>> trainer = MultiTaskTrainer(model, tasks, data, tokenizer, config, accelerator, callbacks)  # doctest: +SKIP
    >>> trainer.resume()  # the checkpoint to continue from, if any, accepted and loaded             # doctest: +SKIP
    >>> history = trainer.train()                                                                 # doctest: +SKIP
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from accelerate import Accelerator
from tqdm.auto import tqdm

from ..config import RunConfig
from ..run_record import RunRecord
from ..tasks import Task
from .batches import TaskBatches
from .best_model import save_best
from .callbacks import CallbackList, TrainerCallback
from .checkpointing import TrainingState, save_checkpoint
from .data import TaskData
from .evaluation import evaluate_tasks, metric_directions
from .finishing import finish, finish_side_jobs
from .input_groups import TrainingUnits
from .loss_log import LossLog
from .optimization import build_optimizer, build_scheduler, freeze_for_training
from .resume import ResumePoint, resume_run
from .resume_contract import trained_with
from .steps import StepRunner, build_balancer
from .streaming import prepare_with_streams

logger = logging.getLogger("hfmtl")


class MultiTaskTrainer:
    """Trains a `MultiTaskModel` on several tasks with Accelerate.

    Args:
        model: the multi-task model (not yet prepared).
        tasks: task_name -> Task, after `setup`.
        data: task_name -> its tokenized `TaskData`.
        tokenizer: used by the collators; saved with the model.
        config: the run config (its `train`, `sampling` and `balancing` sections are used here).
        accelerator: from `hfmtl.training.setup.build_accelerator`.
        callbacks: side jobs (`TrainerCallback`), called in this order. What a config asks for beyond
            the loop -- trackers (``train.report_to``), the model card, Hub pushes, gradient similarity
            -- runs only through them: recipes/train.py's `callbacks_for` builds that set.
    """

    def __init__(
        self,
        model,
        tasks: dict[str, Task],
        data: dict[str, TaskData],
        tokenizer,
        config: RunConfig,
        accelerator: Accelerator,
        callbacks: Iterable[TrainerCallback] = (),
    ):
        self.tasks, self.data, self.tokenizer = tasks, data, tokenizer
        self.config, self.args, self.accelerator = config, config.train, accelerator
        self.output_dir = Path(config.train.output_dir)
        self.callbacks = CallbackList(callbacks)
        args, names = self.args, list(tasks)

        self.batch_sizes = {n: t.config.batch_size or args.per_device_train_batch_size for n, t in tasks.items()}
        # what the sampler draws: input groups (one encoder pass for their tasks) and the other tasks
        units = self.units = TrainingUnits(tasks, data, config, self.batch_sizes)
        self.sampler = units.sampler(config.sampling, args.seed)
        self.steps_per_epoch = units.steps_per_epoch(accelerator.num_processes, args.gradient_accumulation_steps)
        self.total_steps = args.max_steps or math.ceil(args.num_train_epochs * self.steps_per_epoch)
        train_loaders, eval_loaders = units.build_loaders(tokenizer, args)
        samplers = {name: loader.sampler for name, loader in train_loaders.items()}
        # a metric of unknown direction is an error now, not at the first evaluation
        self.greater_is_better = {name: tasks[name].greater_is_better for name in eval_loaders}
        self.best_is_higher = config.best_model_greater_is_better()
        self.record = RunRecord(
            best_metric=args.metric_for_best_model, main_metrics={n: t.main_metric for n, t in tasks.items()}
        )

        self.unfreezer = freeze_for_training(model, config)
        balancer = build_balancer(config.balancing, names, args.seed)
        self.optimizer = build_optimizer(model, args, balancer)
        self.scheduler = build_scheduler(self.optimizer, args, self.total_steps)
        self.model, self.optimizer, self.train_loaders, self.eval_loaders = prepare_with_streams(
            accelerator, model, self.optimizer, train_loaders, eval_loaders
        )

        self.batches = TaskBatches(self.train_loaders, samplers, accelerator)
        self.losses = LossLog(names, accelerator)
        self.runner = StepRunner(
            model=self.model,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            accelerator=accelerator,
            args=args,
            balancing=config.balancing,
            balancer=balancer,
            batches=self.batches,
            record_losses=self.losses.record,
            groups=units.members,
            unfreezer=self.unfreezer,
        )
        self.state = TrainingState(self.sampler, self.batches)
        accelerator.register_for_checkpointing(self.scheduler, self.state)
        if balancer is not None:
            balancer.to(accelerator.device)
            accelerator.register_for_checkpointing(balancer)
        self.eval_seconds = 0.0
        self.resume_point: ResumePoint | None = None

    def add_callback(self, callback: TrainerCallback) -> None:
        """Add a side job after those given to the constructor."""
        self.callbacks.add(callback)

    def resume(self) -> ResumePoint:
        """Accept and load what ``train.resume_from_checkpoint`` names (resume.py): refused, with a
        ConfigError, when it would not continue the same training. Writes nothing; once per trainer."""
        if self.resume_point is None:
            self.resume_point = resume_run(self)
        return self.resume_point

    def train(self) -> list[dict[str, Any]]:
        """Run the training; returns the evaluation history (also in ``metrics.json``)."""
        args, state, resume_point = self.args, self.state, self.resume()
        self.callbacks.on_train_begin(self)
        if resume_point.finishing:
            finish_side_jobs(self)
            return self.record.history
        self.write_record()  # from the start, the record names the run that writes here
        logger.info(
            "Training %d steps (%s) on tasks %s, sampling %s",
            self.total_steps,
            f"{self.steps_per_epoch} per epoch" if self.steps_per_epoch else "no epochs: a stream's size is unknown",
            list(self.tasks),
            {k: round(v, 4) for k, v in self.sampler.probabilities().items()},
        )
        progress = tqdm(
            total=self.total_steps,
            initial=state.global_step,
            desc="train",
            disable=not self.accelerator.is_local_main_process,
            dynamic_ncols=True,
        )
        start_time, last_eval_step = time.time(), resume_point.evaluated_step
        self.model.train()
        while state.global_step < self.total_steps:
            units = self._draw_units()
            step, task_names = state.global_step + 1, self.units.tasks_of(units)
            self.callbacks.on_step_begin(self, step, task_names)
            self.runner.step(units, step_index=state.global_step)
            state.global_step = step
            progress.update(1)
            self.callbacks.on_step_end(self, step, task_names)
            if step % args.logging_steps == 0 or step == self.total_steps:
                logs = self.losses.log(step, self.runner.last_weights, self.scheduler.get_last_lr()[0])
                progress.set_postfix({k.split("/")[1]: f"{v:.3f}" for k, v in logs.items() if k.endswith("/loss")})
            if args.eval_steps and step % args.eval_steps == 0:
                self._evaluate_and_track(step)
                last_eval_step = step
            if args.save_steps and step % args.save_steps == 0:
                extra = trained_with(self.config, self.accelerator, self.total_steps, step)
                directory = save_checkpoint(
                    self.accelerator,
                    self.output_dir,
                    step,
                    args.save_total_limit,
                    run_id=self.record.run_id,
                    extra=extra,
                )
                self.callbacks.on_save(self, step, directory)
        progress.close()
        if self.eval_loaders and last_eval_step != state.global_step:
            self._evaluate_and_track(state.global_step)
        finish(self, runtime_seconds=time.time() - start_time)
        return self.record.history

    def _draw_units(self) -> list[str]:
        """The next step's units (tasks or input groups): the one the sampler draws, or an all-tasks step's."""
        balancing = self.config.balancing
        if balancing.step == "all_tasks":
            return self.sampler.tasks_of_step(self.state.global_step, balancing.tasks_per_step)
        return [self.sampler.next_task()]

    # --- evaluation ----------------------------------------------------------------------------------

    def evaluate(self) -> dict[str, float]:
        """Every task's eval metrics now (see `evaluate_tasks`)."""
        return evaluate_tasks(self.model, self.tasks, self.data, self.eval_loaders, self.accelerator)

    def _evaluate_and_track(self, step: int) -> dict[str, float]:
        """Evaluate, keep the best model so far (in ``output_dir/best``), rewrite metrics.json."""
        started = time.time()
        results = self.evaluate()
        self.eval_seconds += time.time() - started
        self.accelerator.log(results, step=step)
        logger.info("eval at step %d: %s", step, {k: round(v, 4) for k, v in results.items()})
        epochs = {"epoch": round(step / self.steps_per_epoch, 4)} if self.steps_per_epoch else {}  # streaming.py
        entry = {"step": step, **epochs, **results}
        self.record.history = [*(e for e in self.record.history if e["step"] != step), entry]  # one per step
        is_best = self.state.offer_best(results, step, self.args.metric_for_best_model, self.best_is_higher)
        if is_best and self.args.load_best_model_at_end:
            save_best(self.accelerator, self.model, self.output_dir, step, self.record.run_id)
        self.write_record()
        self.callbacks.on_evaluate(self, step, results)
        return results

    # --- output ----------------------------------------------------------------------------------------

    def unwrapped_model(self):
        """The bare `MultiTaskModel` (no DDP wrapper, no torch.compile wrapper): what is saved and loaded."""
        return self.accelerator.unwrap_model(self.model, keep_torch_compile=False)

    def save_model(self, directory: str | Path) -> None:
        """`save_pretrained` of the model and the tokenizer into `directory` (main process writes)."""
        acc = self.accelerator
        state_dict = acc.get_state_dict(self.model)
        if acc.is_main_process:
            self.unwrapped_model().save_pretrained(directory, state_dict=state_dict)
            self.tokenizer.save_pretrained(directory)
        acc.wait_for_everyone()

    def write_record(self, train: dict[str, Any] | None = None, finishing: bool = False) -> None:
        """metrics.json (main process): the evaluations so far, the best one, and once the final model is
        saved what the training used (`train`), `finishing` until the end's side jobs ran (finishing.py)."""
        if self.accelerator.is_main_process:
            record = self.record
            record.best_step, record.best_value, record.train = self.state.best_step, self.state.best_metric, train
            record.finishing = finishing
            keys = list(dict.fromkeys(k for entry in record.history for k in entry if k.startswith("eval/")))
            record.greater_is_better = metric_directions(self.tasks, keys)
            record.greater_is_better.setdefault(record.best_metric, self.best_is_higher)
            record.write(self.output_dir)
