"""Gradient similarity during a training (``train.gradient_similarity_steps``), as a callback of the loop
(hfmtl/training/callbacks.py) around `GradientSimilarityTracker` (gradients.py).

Every N optimizer steps, the task x task cosine of the task gradients on the shared parameters, measured
on fixed probe batches: the first batch of each task from a loader of its own (its own seed, no length
grouping), so the training loaders' positions, and an exact resume, are untouched; the tracker draws no
random numbers and leaves ``.grad`` alone. At the end: ``gradient_similarity.json`` (every matrix and
their mean) and ``gradient_similarity.png`` (the mean's heatmap) in output_dir, before any Hub push.

Main process only (see gradients.py's note on DDP: the measure is one process's batches, and no
collective runs).

Example:
    >>> callback = GradientSimilarityCallback(every_steps=200)                             # doctest: +SKIP
    >>> MultiTaskTrainer(model, tasks, data, tokenizer, config, accelerator, [callback])   # doctest: +SKIP
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from ..training.callbacks import TrainerCallback
from ..training.data import build_train_loader
from .gradients import GradientSimilarityTracker
from .plots import heatmap

if TYPE_CHECKING:
    from ..training.trainer import MultiTaskTrainer

logger = logging.getLogger("hfmtl")

# the probe loaders' seed, offset from train.seed so that probes are not the first training batches
_PROBE_SEED_OFFSET = 7919


class GradientSimilarityCallback(TrainerCallback):
    """Records the gradient cosine matrix every `every_steps` optimizer steps; saves and plots it at the end.

    Args:
        every_steps: optimizer steps between two records (``train.gradient_similarity_steps``).
    """

    def __init__(self, every_steps: int):
        self.every_steps = every_steps
        self.tracker: GradientSimilarityTracker | None = None
        self._probes: dict[str, dict[str, Any]] = {}

    def on_train_begin(self, trainer: MultiTaskTrainer) -> None:
        if not trainer.accelerator.is_main_process:
            return
        self.tracker = GradientSimilarityTracker(list(trainer.tasks))
        self._probes = {name: _probe_batch(trainer, name) for name in trainer.tasks}

    def on_step_end(self, trainer: MultiTaskTrainer, step: int, task_names: list[str]) -> None:
        if self.tracker is None or step % self.every_steps:
            return
        device = trainer.accelerator.device
        probes = {n: {k: v.to(device) for k, v in b.items()} for n, b in self._probes.items()}
        with trainer.accelerator.autocast():
            matrix = self.tracker.record(step, trainer.unwrapped_model(), probes)
        logger.info("gradient cosine at step %d: %s", step, [[round(float(v), 3) for v in row] for row in matrix])

    def on_train_end(self, trainer: MultiTaskTrainer) -> None:
        tracker = self.tracker
        if tracker is None or not tracker.steps:
            return
        tracker.save(trainer.output_dir / "gradient_similarity.json")
        heatmap(
            tracker.mean,
            tracker.task_names,
            trainer.output_dir / "gradient_similarity.png",
            title=f"gradient cosine, mean of steps {tracker.steps[0]}-{tracker.steps[-1]}",
        )


def _probe_batch(trainer: MultiTaskTrainer, task_name: str) -> dict[str, Any]:
    """The first batch of a loader of the task's own (its own seed, no length grouping)."""
    loader = build_train_loader(
        trainer.tasks[task_name],
        trainer.data[task_name].train,
        trainer.tokenizer,
        trainer.batch_sizes[task_name],
        seed=trainer.args.seed + _PROBE_SEED_OFFSET,
        group_by_length=False,
    )
    return next(iter(loader))
