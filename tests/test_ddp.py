"""DDP on two CPU processes (gloo), launched as users launch it: ``accelerate launch --config_file
configs/accelerate/ddp.yaml ... recipes/train.py --cpu`` (the killed launch runs tests/launching.py, the
recipe with a test-only kill). Issue 12's contract for DDP (tests/engine_contract.py): 3 tasks, one streamed, with
``load_best_model_at_end``; the saved model reloads through `AutoModel`; a run killed after a checkpoint
written before every head had trained, mid-stream, resumes to the uninterrupted run bit for bit.
The launches are real: slow.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from engine_contract import check_exact_resume, check_whole_run, launch_whole_crashed_resumed
from launching import ACCELERATE_CONFIGS, RECIPE, accelerate_launch
from safetensors.torch import load_file

pytestmark = pytest.mark.slow


def _launch(config: Path, *overrides: str, crash_at: int | None = None):
    entry = RECIPE if crash_at is None else Path(__file__).with_name("launching.py")
    script = [entry, "--cpu", "--config", config, *overrides]
    return accelerate_launch(script, config_file=ACCELERATE_CONFIGS / "ddp.yaml", crash_at=crash_at)


def _weights_at(checkpoint: Path) -> dict:
    """A DDP checkpoint holds the whole model (Accelerate's save_state, from process 0)."""
    return load_file(str(checkpoint / "model.safetensors"))


@pytest.fixture(scope="module")
def launched(tiny_encoder_dir, tmp_path_factory):
    return launch_whole_crashed_resumed(_launch, tiny_encoder_dir, tmp_path_factory.mktemp("ddp"))


def test_ddp_trains_three_tasks_and_saves_the_best_model_automodel_reloads(launched):
    check_whole_run(launched["whole"], "DDP (MULTI_CPU)", _weights_at)


def test_ddp_resumes_a_kill_after_a_checkpoint_before_every_head_trained_exactly(launched):
    check_exact_resume(launched, _weights_at)
