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

import concurrent.futures
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import HfmtlError
from ..training.callbacks import TrainerCallback
from .hub import push_to_hub
from .model_card import write_model_card

if TYPE_CHECKING:
    from ..training.trainer import MultiTaskTrainer

logger = logging.getLogger("hfmtl")


class ModelCardCallback(TrainerCallback):
    """Writes ``README.md`` (`write_model_card`) into output_dir once the final model and metrics.json
    are there."""

    def on_train_end(self, trainer: MultiTaskTrainer) -> None:
        if trainer.accelerator.is_main_process:
            write_model_card(trainer.output_dir)


class HubPushCallback(TrainerCallback):
    """Pushes a training to ``train.hub_model_id`` (`push_to_hub`) from the main process.

    With ``hub_strategy: best`` each new best model is uploaded in the background right after its
    evaluation (metrics.json written, the best weights in ``output_dir/best``), one upload at a time, in
    order, while training goes on; its card says the training is in progress. At the end, after waiting
    for those, the saved model directory is pushed, so the repo ends with the final model and its card.

    Args:
        args: the train config (``hub_model_id``, ``hub_private_repo``, ``hub_strategy``).
    """

    def __init__(self, args: Any):
        self.repo_id, self.private, self.strategy = args.hub_model_id, args.hub_private_repo, args.hub_strategy
        self._uploads = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="hfmtl-push")
        self._pending: list[concurrent.futures.Future[str]] = []

    def on_evaluate(self, trainer: MultiTaskTrainer, step: int, results: dict[str, float]) -> None:
        if self.strategy == "best" and trainer.accelerator.is_main_process and trainer.state.best_step == step:
            staging = snapshot_best(trainer.output_dir, trainer.tokenizer)
            self._pending.append(self._uploads.submit(self._push_snapshot, staging, step))

    def on_train_end(self, trainer: MultiTaskTrainer) -> None:
        if not trainer.accelerator.is_main_process:
            return
        for future in self._pending:  # in order; a failed upload surfaces here
            future.result()
        url = push_to_hub(trainer.output_dir, self.repo_id, private=self.private)
        logger.info("Pushed %s to %s", trainer.output_dir, url)

    def _push_snapshot(self, staging: Path, step: int) -> str:
        try:
            message = f"Training in progress: best model at step {step}"
            return push_to_hub(staging, self.repo_id, private=self.private, commit_message=message)
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def snapshot_best(output_dir: Path, tokenizer: Any) -> Path:
    """A pushable copy of the best model so far: ``output_dir/best`` with the run's config.yaml, its
    metrics.json and the tokenizer. The next best replaces best/ while this upload may still run, so the
    copy is taken now: hard links inside output_dir (no bytes copied), under a hidden ``.tmp`` name that
    is never uploaded itself.

    Raises:
        HfmtlError: there is no best model (the 'best' strategy needs ``load_best_model_at_end``).
    """
    best = Path(output_dir) / "best"
    if not (best / "config.json").is_file():
        raise HfmtlError(
            f"{best} holds no model: the 'best' hub strategy needs train.load_best_model_at_end=true "
            "and a push after an evaluation"
        )
    staging = Path(tempfile.mkdtemp(prefix=".hub-push-", suffix=".tmp", dir=output_dir))
    try:
        _link_tree(best, staging)
        for name in ("config.yaml", "metrics.json"):
            if (Path(output_dir) / name).is_file():
                shutil.copy2(Path(output_dir) / name, staging / name)
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return staging


def _link_tree(source: Path, target: Path) -> None:
    """Hard-link the files of `source` into `target` (a copy where links are not possible)."""
    for path in source.rglob("*"):
        destination = target / path.relative_to(source)
        if path.is_dir():
            destination.mkdir(parents=True, exist_ok=True)
            continue
        destination.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, destination)
        except OSError:  # another file system, or links not supported
            shutil.copy2(path, destination)
