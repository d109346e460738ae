"""``hfmtl train`` in this process, SIGKILLed at one named moment of its code: how the crash-safety sweep
(tests/test_crash_sweep.py) kills a run at an exact point, as ``kill -9`` would -- no ``finally`` block, no
exit handler, no buffered write runs after it, and the output directory's lock is left behind.

    python tests/kill_driver.py MOMENT CONFIG [OVERRIDE ...]

MOMENT is one of `MOMENTS`, or ``none`` (run to the end). The wrapped functions are the real ones; the
kill comes just before or just after the call the moment names.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path


def _die() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _wrap(owner, name: str, *, before: Callable[..., bool] | None = None, after: Callable[..., bool] | None = None):
    """Replace `owner.name` by the same function with a kill before the call (when `before(*args)` is
    true) or after it (when `after(*args)` is true)."""
    original = getattr(owner, name)

    def wrapper(*args, **kwargs):
        if before is not None and before(*args, **kwargs):
            _die()
        result = original(*args, **kwargs)
        if after is not None and after(*args, **kwargs):
            _die()
        return result

    setattr(owner, name, wrapper)


def _nth_call(n: int) -> Callable[..., bool]:
    calls = [0]

    def is_nth(*args, **kwargs) -> bool:
        calls[0] += 1
        return calls[0] == n

    return is_nth


def _always(*args, **kwargs) -> bool:
    return True


# --- the moments: each installs its kill -------------------------------------------------------------------


def _checkpoint_without_manifest() -> None:
    """A checkpoint's files are written (Accelerate's save_state), its manifest not: the second save."""
    from hfmtl.training import checkpointing

    _wrap(checkpointing, "write_manifest", before=_nth_call(2))


def _checkpoint_half_removed() -> None:
    """Rotation renamed an old checkpoint out of the checkpoint names and is deleting it."""
    import shutil

    def doomed_exists(path, *args, **kwargs) -> bool:
        return str(path).endswith(".old.tmp") and Path(path).exists()

    _wrap(shutil, "rmtree", before=doomed_exists)


def _evaluation_not_recorded() -> None:
    """An evaluation ran (the second), its results are not yet in metrics.json."""
    from hfmtl.training import trainer

    _wrap(trainer, "evaluate_tasks", after=_nth_call(2))


def _best_model_staged() -> None:
    """The best model is written beside ``best/``, not yet renamed to it."""
    from hfmtl.training import best_model

    _wrap(best_model, "replace_directory", before=_always)


def _best_loaded_at_end() -> None:
    """The end of the run checked ``best/`` and loads it; the final model is not saved yet."""
    from hfmtl.training import finishing

    _wrap(finishing, "check_best_holds", after=_always)


def _final_model_saved() -> None:
    """The final model is in output_dir; metrics.json does not say the run trained yet."""
    from hfmtl.training.trainer import MultiTaskTrainer

    def into_output_dir(trainer, directory, *args, **kwargs) -> bool:
        return Path(directory) == trainer.output_dir

    _wrap(MultiTaskTrainer, "save_model", after=into_output_dir)


def _record_finishing() -> None:
    """metrics.json holds the training's summary; ``best/`` is not removed, the card not written."""
    from hfmtl.training import finishing

    _wrap(finishing, "remove_best", before=_always)


def _model_card() -> None:
    """The model card is being written."""
    import hfmtl.publish.callbacks

    _wrap(hfmtl.publish.callbacks, "write_model_card", before=_always)


def _completion_marker() -> None:
    """Everything is written but the completion marker (the record without ``finishing``)."""
    from hfmtl.run_record import RunRecord

    def completing(record, *args, **kwargs) -> bool:
        return record.train is not None and not record.finishing

    _wrap(RunRecord, "write", before=completing)


MOMENTS: dict[str, Callable[[], None]] = {
    "checkpoint-without-manifest": _checkpoint_without_manifest,
    "checkpoint-half-removed": _checkpoint_half_removed,
    "evaluation-not-recorded": _evaluation_not_recorded,
    "best-model-staged": _best_model_staged,
    "best-loaded-at-end": _best_loaded_at_end,
    "final-model-saved": _final_model_saved,
    "record-finishing": _record_finishing,
    "model-card": _model_card,
    "completion-marker": _completion_marker,
}


def main(argv: list[str]) -> int:
    moment, config, *overrides = argv
    if moment != "none":
        MOMENTS[moment]()
    from hfmtl import cli

    return cli.main(["train", config, "--cpu", *overrides])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
