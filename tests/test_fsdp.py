"""FSDP2 on two CPU processes (gloo), launched as users launch it: ``accelerate launch --config_file
configs/accelerate/fsdp.yaml``, the same run config as every other engine. Accelerate 1.15 builds FSDP
only on GPUs, so the launch runs tests/fsdp_shim.py, which forces Accelerate's state to FSDP on the CPU
and then runs recipes/train.py unchanged (docs/scaling.md). The sharding, the sharded checkpoints and
every hfmtl code path are the real ones.

Issue 12's contract (tests/engine_contract.py) is checked on three shared launches: 3 tasks, one
streamed, with ``load_best_model_at_end``; the same run killed after a checkpoint written before a head
had trained, mid-stream; and its resume. The launches are real: slow.
"""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import TASK_CONFIGS, make_config
from engine_contract import (
    EVERY,
    MAX_STEPS,
    TASKS,
    check_exact_resume,
    check_whole_run,
    launch_whole_crashed_resumed,
    trained_tasks,
)
from launching import ACCELERATE_CONFIGS, accelerate_launch, output_of

from hfmtl.config import config_from_dict
from hfmtl.errors import ConfigError

SHIM = Path(__file__).with_name("fsdp_shim.py")


def _launch(config: Path, *overrides: str, crash_at: int | None = None):
    """`accelerate launch` of configs/accelerate/fsdp.yaml on 2 processes, through the test shim."""
    script = [SHIM, "--config", config, *overrides]
    return accelerate_launch(script, config_file=ACCELERATE_CONFIGS / "fsdp.yaml", crash_at=crash_at)


def _run_config(encoder: str, out: Path, **train) -> dict:
    """A plain 3-task run config, for the checks that need no launch."""
    tasks = {name: TASK_CONFIGS[name] for name in ("rte", "stsb", "ner")}
    settings = {"max_steps": MAX_STEPS, "load_best_model_at_end": True, "metric_for_best_model": "rte/accuracy"}
    return make_config(encoder, out, tasks, samples=32, eval_samples=16, **settings, **train)


@pytest.fixture(scope="module")
def launched(tiny_encoder_dir, tmp_path_factory):
    return launch_whole_crashed_resumed(_launch, tiny_encoder_dir, tmp_path_factory.mktemp("fsdp"))


def _gathered_weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    """The full model weights of a sharded (DCP) FSDP checkpoint, gathered with torch's converter."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    target = checkpoint.parent.parent.parent / f"{checkpoint.name}-gathered.pt"
    if not target.exists():
        dcp_to_torch_save(checkpoint / "pytorch_model_fsdp_0", target)
    return torch.load(target, weights_only=True)["model"]


@pytest.mark.slow
def test_fsdp2_trains_three_tasks_and_saves_the_best_model_automodel_reloads(launched):
    check_whole_run(launched["whole"], "FSDP2", _gathered_weights)
    # the checkpoints are FSDP's sharded ones (configs/accelerate/fsdp.yaml: SHARDED_STATE_DICT)
    out = launched["whole"].out
    assert (out / "checkpoints" / f"checkpoint-{MAX_STEPS}" / "pytorch_model_fsdp_0" / ".metadata").is_file()


@pytest.mark.slow
def test_fsdp2_resumes_a_kill_after_a_checkpoint_before_every_head_trained_exactly(launched):
    import torch.distributed.checkpoint as dcp

    # the sharded optimizer state of the checkpoint holds no state for a head that had not trained
    optimizer = launched["crashed"].out / "checkpoints" / f"checkpoint-{EVERY}" / "optimizer_0"
    held = dcp.FileSystemReader(str(optimizer)).read_metadata().state_dict_metadata
    untrained = [t for t in TASKS if not any(key.startswith(f"optimizer.state.heads.{t}.") for key in held)]
    assert untrained and set(untrained) == set(TASKS) - trained_tasks(launched["whole"].out, EVERY)
    check_exact_resume(launched, _gathered_weights)


def _stand_in_fsdp2():
    """What `check_engine_supports` reads of an FSDP2 Accelerator (the launches above build real ones)."""
    from accelerate.utils import DistributedType

    return SimpleNamespace(distributed_type=DistributedType.FSDP, is_fsdp2=True)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"balancing": {"step": "all_tasks", "method": "pcgrad"}}, "balancing.method='pcgrad' combines per-task"),
        ({"balancing": {"step": "all_tasks", "method": "mgda"}}, "balancing.method='mgda' combines per-task"),
        (
            {"balancing": {"step": "all_tasks", "method": "uncertainty"}},
            "'uncertainty' learns its weights as optimizer parameters outside",
        ),
        (
            {"peft": {"mode": "per_task", "config": {"peft_type": "LORA", "r": 4, "target_modules": ["query"]}}},
            "peft adapters are not supported under FSDP2 yet",
        ),
    ],
    ids=["pcgrad", "mgda", "uncertainty", "per-task-lora"],
)
def test_what_fsdp2_cannot_do_is_one_line_naming_the_engine_and_the_alternative(
    overrides, expected, tiny_encoder_dir, tmp_path
):
    from hfmtl.training.engine import check_engine_supports

    data = {**_run_config(tiny_encoder_dir, tmp_path / "out"), **overrides}
    with pytest.raises(ConfigError, match=re.escape(expected)) as caught:
        check_engine_supports(config_from_dict(data), _stand_in_fsdp2())
    message = str(caught.value)
    assert "\n" not in message and "FSDP2" in message and "DDP" in message


def test_what_fsdp2_can_do_passes(tiny_encoder_dir, tmp_path):
    from hfmtl.training.engine import check_engine_supports

    for method in ("equal", "dwa", "rlw", "gradnorm"):
        balancing = {"step": "all_tasks", "method": method}
        data = {**_run_config(tiny_encoder_dir, tmp_path / "out"), "balancing": balancing}
        check_engine_supports(config_from_dict(data), _stand_in_fsdp2())


@pytest.mark.slow
def test_a_refusal_under_fsdp2_comes_from_every_process_before_anything_is_written(tiny_encoder_dir, tmp_path):
    from conftest import write_config

    out = tmp_path / "refused"
    config = write_config(tmp_path / "run.yaml", _run_config(tiny_encoder_dir, out))
    done = _launch(config, "balancing.step=all_tasks", "balancing.method=pcgrad")
    output = output_of(done)
    assert done.returncode != 0
    expected = "error: balancing.method='pcgrad' combines per-task gradients of parameters that FSDP2 shards"
    assert output.count(expected) == 2, output[-3000:]
    assert not out.exists()


# --- weight loading (hfmtl/model/weights.py), the path the best model and a resume take -------------

_SPECS = {"cls": {"type": "classification", "num_labels": 2, "problem_type": "single_label_classification"}}


def test_saved_weights_load_into_a_model_compiled_in_place(tiny_encoder_dir, tmp_path):
    """A layer compiled in place names its parameters under torch.compile's ``_orig_mod.``; the saved
    file names them plainly (hfmtl/model/modeling.py strips the prefix on save)."""
    from hfmtl import MultiTaskModel

    torch.manual_seed(0)
    saved = MultiTaskModel.from_encoder(tiny_encoder_dir, _SPECS)
    saved.save_pretrained(tmp_path)
    torch.manual_seed(1)
    model = MultiTaskModel.from_encoder(tiny_encoder_dir, _SPECS)
    layers = model.encoder.encoder.layer
    layers[0] = torch.compile(layers[0])  # compiled lazily: nothing runs until a forward
    assert any("_orig_mod." in name for name in model.state_dict())
    model.load_weights(tmp_path)
    plain = {name.replace("_orig_mod.", ""): tensor for name, tensor in model.state_dict().items()}
    assert all(torch.equal(plain[name], tensor) for name, tensor in saved.state_dict().items())


def test_weights_with_a_missing_parameter_are_refused_and_nothing_is_loaded(tiny_encoder_dir, tmp_path):
    from safetensors.torch import save_file

    from hfmtl import MultiTaskModel
    from hfmtl.errors import HfmtlError

    model = MultiTaskModel.from_encoder(tiny_encoder_dir, _SPECS)
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    state = {name: torch.zeros_like(tensor) for name, tensor in before.items() if name != "heads.cls.out_proj.bias"}
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(HfmtlError, match=r"1 missing \(e\.g\. 'heads\.cls\.out_proj\.bias'\)"):
        model.load_weights(tmp_path)
    assert all(torch.equal(before[name], tensor) for name, tensor in model.state_dict().items())
