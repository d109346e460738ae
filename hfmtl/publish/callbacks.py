"""What a training leaves for others, as callbacks of the loop (hfmtl/training/callbacks.py): the model
card of the saved model directory, and the pushes to the Hub (``train.push_to_hub``).

Both act on the main process only. In recipes/train.py the card callback comes before the push one:
at the end of a training the saved model, metrics.json, the card (and any plot) are written before
the final push uploads the directory.

Example:
    >>> callbacks = [ModelCardCallback(), HubPushCallback(config.train)]                  # doctest: +SKIP
    >>> MultiTaskTrainer(model, tasks, data, tokenizer, config, accelerator, callbacks)   # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..training.callbacks import TrainerCallback
from .hub import TrainingPusher
from .model_card import write_model_card

if TYPE_CHECKING:
    from ..training.trainer import MultiTaskTrainer


class ModelCardCallback(TrainerCallback):
    """Writes ``README.md`` (`write_model_card`) into output_dir once the final model and metrics.json
    are there."""

    def on_train_end(self, trainer: MultiTaskTrainer) -> None:
        if trainer.accelerator.is_main_process:
            write_model_card(trainer.output_dir)


class HubPushCallback(TrainerCallback):
    """Pushes a training to ``train.hub_model_id``: with ``hub_strategy: best``, each new best model in
    the background right after its evaluation (metrics.json written, the best weights in
    ``output_dir/best``); at the end, after waiting for those, the saved model directory.

    Args:
        args: the train config (``hub_model_id``, ``hub_private_repo``, ``hub_strategy``).
    """

    def __init__(self, args: Any):
        self.pusher = TrainingPusher(args)

    def on_evaluate(self, trainer: MultiTaskTrainer, step: int, results: dict[str, float]) -> None:
        if trainer.accelerator.is_main_process and trainer.state.best_step == step:
            self.pusher.push_best(trainer.output_dir, trainer.tokenizer)

    def on_train_end(self, trainer: MultiTaskTrainer) -> None:
        if trainer.accelerator.is_main_process:
            self.pusher.push_final(trainer.output_dir)
