"""Callbacks: the side jobs of a training (model card, Hub pushes, gradient-similarity plots, trackers)
hang on hooks of the loop instead of living in it.

The loop in trainer.py calls every hook on every callback, in the order the callbacks were given:

    on_train_begin   a resume is loaded; the first step is next
    on_step_begin    before optimizer step `step` (counted from 1) on `task_names`
    on_step_end      right after that step: before its logging, evaluation and checkpoint
    on_evaluate      after an evaluation's results are tracked and metrics.json is written
    on_save          after a checkpoint is written (every process)
    on_train_end     after the final model and metrics.json are written

Hooks run on every process; a callback that writes files or talks to the Hub checks
``trainer.accelerator.is_main_process`` itself. A callback that raises stops the training (a test
simulates a crash so). The order of the list is the order of the side effects: recipes/train.py puts
the card and the plots before the push that uploads them.

Example:
    >>> class StopAt(TrainerCallback):
    ...     def on_step_begin(self, trainer, step, task_names):
    ...         if step == 8:
    ...             raise KeyboardInterrupt("simulated crash")
    >>> callbacks = CallbackList([StopAt()])
    >>> callbacks.on_step_begin(None, 7, ["rte"])  # nothing happens before step 8
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # type hints only: callbacks are handed the trainer, they never import it
    from .trainer import MultiTaskTrainer


class TrainerCallback:
    """A side job of the training loop: override the hooks it needs (each does nothing here)."""

    def on_train_begin(self, trainer: MultiTaskTrainer) -> None:
        """`train()` starts: a resume is loaded (``trainer.state.global_step`` is where it continues).
        Draw no random numbers from the global generators here: they would shift the training's own
        draws (dropout) in a run and not in the run it resumes."""

    def on_step_begin(self, trainer: MultiTaskTrainer, step: int, task_names: list[str]) -> None:
        """Optimizer step `step` (counted from 1) is about to train `task_names`."""

    def on_step_end(self, trainer: MultiTaskTrainer, step: int, task_names: list[str]) -> None:
        """Optimizer step `step` trained `task_names`; its logging, evaluation and checkpoint follow."""

    def on_evaluate(self, trainer: MultiTaskTrainer, step: int, results: dict[str, float]) -> None:
        """An evaluation at `step` gave `results`; the best model (``trainer.state.best_step``) and
        metrics.json are up to date."""

    def on_save(self, trainer: MultiTaskTrainer, step: int, directory: Path) -> None:
        """The checkpoint of `step` is complete in `directory`."""

    def on_train_end(self, trainer: MultiTaskTrainer) -> None:
        """The final model (the best one, if asked), its tokenizer and metrics.json are in output_dir."""


class CallbackList:
    """Calls one hook on every callback, in order (the trainer's dispatcher)."""

    def __init__(self, callbacks: Iterable[TrainerCallback] = ()):
        self.callbacks = list(callbacks)

    def add(self, callback: TrainerCallback) -> None:
        self.callbacks.append(callback)

    def _call(self, hook: str, *args: Any) -> None:
        for callback in self.callbacks:
            getattr(callback, hook)(*args)

    def on_train_begin(self, trainer: MultiTaskTrainer) -> None:
        self._call("on_train_begin", trainer)

    def on_step_begin(self, trainer: MultiTaskTrainer, step: int, task_names: list[str]) -> None:
        self._call("on_step_begin", trainer, step, task_names)

    def on_step_end(self, trainer: MultiTaskTrainer, step: int, task_names: list[str]) -> None:
        self._call("on_step_end", trainer, step, task_names)

    def on_evaluate(self, trainer: MultiTaskTrainer, step: int, results: dict[str, float]) -> None:
        self._call("on_evaluate", trainer, step, results)

    def on_save(self, trainer: MultiTaskTrainer, step: int, directory: Path) -> None:
        self._call("on_save", trainer, step, directory)

    def on_train_end(self, trainer: MultiTaskTrainer) -> None:
        self._call("on_train_end", trainer)


class TrackersCallback(TrainerCallback):
    """The run's experiment trackers (``train.report_to``): started with the run config as their
    hyperparameters, finished when the training ends.

    Finished per training, not ended: a staged run trains again in the same process group, and the
    recipe calls ``accelerator.end_training`` once, at the very end.
    """

    def on_train_begin(self, trainer: MultiTaskTrainer) -> None:
        from .setup import flat_hparams

        trainer.accelerator.init_trackers("hfmtl", config=flat_hparams(trainer.config.to_dict()))

    def on_train_end(self, trainer: MultiTaskTrainer) -> None:
        for tracker in trainer.accelerator.trackers:
            tracker.finish()
