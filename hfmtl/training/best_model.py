"""The best model so far, in ``<output_dir>/best``, and which evaluation's weights it holds.

With ``train.load_best_model_at_end`` the trainer saves the weights of each new best evaluation into
``best/`` and loads them back at the end. A resume must be sure that ``best/`` holds the weights of the
best evaluation its checkpoint knows: the run that crashed may have saved a newer best after that
checkpoint (an exact resume saves it again; an inexact one -- nondeterministic kernels -- may not), and
an older run in the same directory left its own. So ``best/`` says whose weights it holds: a hidden
``.hfmtl-best.json`` with the step and the run id, written inside the directory before it takes the name
``best`` (the model is saved under ``best.staging.tmp`` by `save_model_atomic`, the file is added, then
one rename). The final save refuses weights that are not the best evaluation's
(`check_best_holds`) rather than save a model under another step's name. The file is hidden, so a
Hub push of a best snapshot leaves it out (hfmtl/publish/hub.py).

Example:
    >>> import tempfile, pathlib
    >>> held_by_best(pathlib.Path(tempfile.mkdtemp()))  # no best model yet
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from ..errors import HfmtlError
from ..files import replace_directory, write_json_atomic
from ..run_record import read_json
from .checkpointing import save_model_atomic

logger = logging.getLogger("hfmtl")

BEST_DIR = "best"
_STAGING = "best.staging.tmp"
_HELD = ".hfmtl-best.json"


def save_best(accelerator, model, output_dir: Path, step: int, run_id: str | None) -> None:
    """Save the prepared `model` as the best model, the weights of `step` of the run `run_id`, replacing
    the previous one in one rename. Call on every process."""
    staging = output_dir / _STAGING
    save_model_atomic(accelerator, model, staging)
    if accelerator.is_main_process:
        write_json_atomic(staging / _HELD, {"step": step, "run_id": run_id})
        replace_directory(staging, output_dir / BEST_DIR)
    accelerator.wait_for_everyone()


def held_by_best(output_dir: Path) -> tuple[int | None, str | None] | None:
    """(step, run id) of the weights in ``best/``; None when there is no best model. A best model saved
    before ``best/`` said whose it is gives (None, None)."""
    best = output_dir / BEST_DIR
    if not (best / "config.json").is_file():
        return None
    held = read_json(best / _HELD) or {}
    return held.get("step"), held.get("run_id")


def check_best_holds(output_dir: Path, step: int, run_id: str | None) -> Path:
    """``best/``, after checking that it holds the weights of `step` of the run `run_id`.

    Raises:
        HfmtlError: it holds other weights, or none: the final model would be another step's under the
            best step's name.
    """
    held = held_by_best(output_dir)
    if held != (step, run_id):
        what = "no model" if held is None else f"the weights of step {held[0]} of run {held[1]}"
        raise HfmtlError(
            f"{output_dir / BEST_DIR} holds {what}, not those of the best evaluation (step {step} of run "
            f"{run_id}): the best model cannot be saved; resume from a checkpoint at or before step {step}, "
            "or set train.load_best_model_at_end=false to keep the last weights"
        )
    return output_dir / BEST_DIR


def remove_best(output_dir: Path) -> None:
    """Remove ``best/`` (and a staging copy a crash left). Main process, once the final model is saved."""
    for name in (BEST_DIR, _STAGING):
        shutil.rmtree(output_dir / name, ignore_errors=True)
