"""DeepSpeed ZeRO-2 and ZeRO-3: real 2-process launches of the shipped Accelerate configs
(configs/accelerate/deepspeed_zero*.yaml) on CPU processes (gloo), through tests/deepspeed_shim.py (the one
choice Accelerate makes differently without a GPU; docs/scaling.md).

Per stage, issue 12's contract (tests/engine_contract.py) is checked on three shared launches: 3 tasks,
one streamed, with ``load_best_model_at_end``; the same run killed after a checkpoint written before
every head had trained, mid-stream; and its resume. Then per-task LoRA under ZeRO-3, and a gradient
balancing method refused.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import TASK_CONFIGS, make_config
from engine_contract import (
    TASKS,
    check_exact_resume,
    check_whole_run,
    launch_whole_crashed_resumed,
    trained_tasks,
    write_run_config,
)
from launching import ACCELERATE_CONFIGS, accelerate_launch, output_of

from hfmtl.run_record import RunRecord

pytest.importorskip("deepspeed")  # the `deepspeed` extra: `make install` and CI install it

SHIM = Path(__file__).with_name("deepspeed_shim.py")
LORA = [
    "peft.mode=per_task",
    "peft.config.peft_type=LORA",
    "peft.config.r=4",
    "peft.config.target_modules=[query,value]",
]


def _launcher(stage: int):
    def launch(config: Path, *overrides: str, crash_at: int | None = None):
        """`accelerate launch` of the stage's shipped config, 2 processes, through the test shim."""
        script = [SHIM, "--config", config, *overrides]
        config_file = ACCELERATE_CONFIGS / f"deepspeed_zero{stage}.yaml"
        return accelerate_launch(script, config_file=config_file, crash_at=crash_at)

    return launch


def _fp32_weights(checkpoint: Path) -> dict:
    """The model's weights in a DeepSpeed checkpoint (each process holds a partition), put together by
    DeepSpeed's own reader."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    return get_fp32_state_dict_from_zero_checkpoint(str(checkpoint))


@pytest.fixture(scope="module", params=[2, 3], ids=["zero2", "zero3"])
def runs(request, tiny_encoder_dir, tmp_path_factory):
    """(stage, {"whole" | "crashed" | "resumed": launch}): the launches shared by one stage's tests."""
    stage = request.param
    root = tmp_path_factory.mktemp(f"zero{stage}")
    return stage, launch_whole_crashed_resumed(_launcher(stage), tiny_encoder_dir, root)


@pytest.mark.slow
@pytest.mark.engines
def test_three_tasks_train_evaluate_and_save_the_best_model_automodel_reloads(runs):
    stage, launched = runs
    check_whole_run(launched["whole"], f"DeepSpeed ZeRO-{stage}", _fp32_weights)


@pytest.mark.slow
@pytest.mark.engines
def test_a_kill_after_a_checkpoint_before_every_head_trained_resumes_exactly(runs):
    _, launched = runs
    check_exact_resume(launched, _fp32_weights)


@pytest.mark.slow
@pytest.mark.engines
def test_per_task_lora_under_zero3(tiny_encoder_dir, tmp_path):
    from transformers import AutoModel

    import hfmtl  # noqa: F401

    config = write_run_config(tiny_encoder_dir, tmp_path, max_steps=4, save_steps=None)
    done = _launcher(3)(config, *LORA)
    output = output_of(done)
    assert done.returncode == 0, output[-3000:]
    out = tmp_path / "out"
    saved = json.loads((out / "config.json").read_text())
    assert saved["peft"]["adapters"] == list(TASKS) and not (out / "model.safetensors").exists()
    best = RunRecord.read(out).best_step
    assert f"Loaded the best model (step {best}," in output
    model = AutoModel.from_pretrained(out)  # the adapters of the best step, through transformers
    trained = trained_tasks(out, best)
    lora_b = {name: tensor for name, tensor in model.state_dict().items() if "lora_B" in name}
    for task in TASKS:  # LoRA's B matrices start at zero: they moved exactly where their task trained
        moved = [tensor.abs().sum() > 0 for name, tensor in lora_b.items() if f".{task}." in name]
        assert moved and all(moved) == (task in trained) and any(moved) == (task in trained), (task, trained)


@pytest.mark.slow
@pytest.mark.engines
def test_a_gradient_balancing_method_is_refused_before_training(tiny_encoder_dir, tmp_path):
    config = write_run_config(tiny_encoder_dir, tmp_path)
    done = _launcher(2)(config, "balancing.step=all_tasks", "balancing.method=pcgrad")
    output = output_of(done)
    assert done.returncode != 0
    expected = "balancing.method='pcgrad' combines per-task gradients, which DeepSpeed ZeRO-2 does not give back"
    assert output.count("error: ") == 2 and output.count(expected) == 2, output[-3000:]
    assert output.count("use a loss weighting (e.g. balancing.method=equal or uncertainty)") == 2
    assert "Traceback" not in output.split("error: ")[0]
    assert not (tmp_path / "out").exists()  # refused before anything was written


# --- the run config's accumulation and clipping in DeepSpeed's config (no launch: the plugin is real) ---


def _deepspeed_accelerator(**plugin):
    from types import SimpleNamespace

    from accelerate.utils import DeepSpeedPlugin, DistributedType

    return SimpleNamespace(
        distributed_type=DistributedType.DEEPSPEED,
        state=SimpleNamespace(deepspeed_plugin=DeepSpeedPlugin(zero_stage=2, **plugin)),
    )


def _run_config(encoder: str, tmp_path: Path, **train):
    from hfmtl.config import config_from_dict

    return config_from_dict(make_config(encoder, tmp_path / "out", {"rte": TASK_CONFIGS["rte"]}, **train))


@pytest.mark.parametrize(("max_grad_norm", "clipping"), [(0.5, 0.5), (None, 0.0)])
def test_auto_values_take_the_run_config(max_grad_norm, clipping, tiny_encoder_dir, tmp_path):
    from hfmtl.training.deepspeed_config import align_deepspeed_config

    accelerator = _deepspeed_accelerator(gradient_accumulation_steps="auto")  # gradient_clipping: auto
    config = _run_config(tiny_encoder_dir, tmp_path, max_grad_norm=max_grad_norm, gradient_accumulation_steps=3)
    align_deepspeed_config(config, accelerator)
    ds_config = accelerator.state.deepspeed_plugin.deepspeed_config
    assert ds_config["gradient_clipping"] == clipping and ds_config["gradient_accumulation_steps"] == 3


@pytest.mark.parametrize(
    ("plugin", "train", "expected"),
    [
        ({"gradient_accumulation_steps": 1}, {"gradient_accumulation_steps": 4}, "train.gradient_accumulation_steps=4"),
        ({"gradient_clipping": 1.0}, {"max_grad_norm": 0.5}, "train.max_grad_norm=0.5 but the DeepSpeed config"),
    ],
    ids=["accumulation", "clipping"],
)
def test_a_deepspeed_value_that_differs_is_refused(plugin, train, expected, tiny_encoder_dir, tmp_path):
    from hfmtl.errors import ConfigError
    from hfmtl.training.deepspeed_config import align_deepspeed_config

    with pytest.raises(ConfigError, match=re.escape(expected)) as caught:
        align_deepspeed_config(_run_config(tiny_encoder_dir, tmp_path, **train), _deepspeed_accelerator(**plugin))
    assert "DeepSpeed's value would win" in str(caught.value) and "\n" not in str(caught.value)
