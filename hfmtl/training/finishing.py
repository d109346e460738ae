"""The end of a training, in an order a kill can interrupt anywhere.

    1. the final weights: the best evaluation's (``best/``, checked to hold them) with
       ``load_best_model_at_end``, else the last ones;
    2. the model and tokenizer saved into output_dir;
    3. the run record with what the training used (``train``) and ``finishing``: from here on the final
       model is durable, and ``best/``, no longer needed, is removed;
    4. the side jobs of the end (`TrainerCallback.on_train_end`: the model card, the Hub push, plots, the
       trackers);
    5. the completion marker: the record written once more without ``finishing``. Only now is the run
       `RunRecord.finished`, and final: a re-run of its command trains nothing (hfmtl/config/stages.py).

Each step gives the same result when it runs again, and a resume runs again what a kill left undone.
Killed before 3, a resume starts from the newest checkpoint: past the last step it goes straight to 1,
where ``best/`` still holds the best weights (never the last weights under the best step's name).
Killed after 3, a resume loads the saved final model and runs 4 and 5 (`finish_side_jobs`).

Example:
    >>> finish(trainer, runtime_seconds=time.time() - start_time)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ..run_record import RunRecord
from .best_model import check_best_holds, remove_best
from .setup import training_summary
from .zero3 import load_weights

if TYPE_CHECKING:
    from .trainer import MultiTaskTrainer

logger = logging.getLogger("hfmtl")


def finish(trainer: MultiTaskTrainer, runtime_seconds: float) -> None:
    """Steps 1 to 5 above, after the last optimizer step and its evaluation. Call on every process."""
    args, state, output_dir = trainer.args, trainer.state, trainer.output_dir
    if args.load_best_model_at_end and state.best_step is not None:
        best = check_best_holds(output_dir, state.best_step, trainer.record.run_id)
        load_weights(trainer.accelerator, trainer.unwrapped_model(), best)  # also into ZeRO-3 partitions
        key = args.metric_for_best_model
        logger.info("Loaded the best model (step %s, %s %.4f)", state.best_step, key, state.best_metric)
    trainer.save_model(output_dir)
    used = training_summary(trainer.accelerator, state.global_step, runtime_seconds, trainer.eval_seconds)
    trainer.write_record(train=used, finishing=True)
    if trainer.accelerator.is_main_process:
        remove_best(output_dir)
    trainer.accelerator.wait_for_everyone()
    _complete(trainer)


def finish_side_jobs(trainer: MultiTaskTrainer) -> None:
    """Steps 4 and 5 for a run killed after step 3: its final model and record are in output_dir. The
    trainer takes them over (its model then holds the final weights, as after `finish`)."""
    output_dir, state = trainer.output_dir, trainer.state
    trainer.record = RunRecord.read(output_dir)
    state.global_step = trainer.record.train["steps"]
    state.best_step, state.best_metric = trainer.record.best_step, trainer.record.best_value
    load_weights(trainer.accelerator, trainer.unwrapped_model(), output_dir)
    logger.info("The final model of step %d was saved before an interruption: finishing its run", state.global_step)
    if trainer.accelerator.is_main_process:
        remove_best(output_dir)
    trainer.accelerator.wait_for_everyone()
    _complete(trainer)


def _complete(trainer: MultiTaskTrainer) -> None:
    trainer.callbacks.on_train_end(trainer)
    trainer.write_record(train=trainer.record.train, finishing=False)
    trainer.accelerator.wait_for_everyone()
