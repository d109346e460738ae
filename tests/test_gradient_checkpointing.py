"""``train.gradient_checkpointing``: the encoder recomputes its activations in backward -- the same
training (dropout masks included: checkpointing replays the RNG), so it may also be switched on when
resuming a run that ran out of memory."""

from __future__ import annotations

import pytest
import torch
from conftest import TASK_CONFIGS, make_config, run_recipe, write_config

from hfmtl.errors import ConfigError
from hfmtl.model.backbone import enable_gradient_checkpointing

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


def _train(encoder: str, tmp_path, name: str, *overrides: str):
    out = tmp_path / name
    tasks = {"rte": TASK_CONFIGS["rte"], "stsb": TASK_CONFIGS["stsb"]}
    config = make_config(encoder, out, tasks, samples=16, eval_samples=8, max_steps=3)
    trainer = run_recipe(write_config(tmp_path / f"{name}.yaml", config), *overrides)
    return trainer.unwrapped_model()


def test_checkpointing_trains_the_same_weights(tiny_encoder_dir, tmp_path):
    from conftest import reset_accelerate_state

    plain = _train(tiny_encoder_dir, tmp_path, "plain")
    reset_accelerate_state()
    checkpointed = _train(tiny_encoder_dir, tmp_path, "checkpointed", "train.gradient_checkpointing=true")
    assert checkpointed.encoder.is_gradient_checkpointing and not plain.encoder.is_gradient_checkpointing
    expected = plain.state_dict()
    for name, value in checkpointed.state_dict().items():
        torch.testing.assert_close(value, expected[name], rtol=1e-5, atol=1e-7, msg=name)


def test_an_encoder_without_checkpointing_is_one_line():
    class Plain(torch.nn.Module):
        supports_gradient_checkpointing = False

    with pytest.raises(ConfigError, match="train.gradient_checkpointing: Plain does not support"):
        enable_gradient_checkpointing(_holder(Plain()))


def _holder(encoder: torch.nn.Module) -> torch.nn.Module:
    holder = torch.nn.Module()
    holder.encoder = encoder
    return holder
