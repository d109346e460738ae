"""FSDP2 on two CPU processes (gloo), launched as users launch it: ``accelerate launch --config_file
configs/accelerate/fsdp.yaml``, the same run config as every other engine. Accelerate 1.15 builds FSDP
only on GPUs, so the launch runs tests/fsdp_shim.py, which forces Accelerate's state to FSDP on the CPU
and then runs recipes/train.py unchanged (docs/scaling.md). The sharding, the sharded checkpoints and
every hfmtl code path are the real ones.

One training (3 tasks, ``load_best_model_at_end``) and one resume of it, from a checkpoint written
before one of the heads had trained, are shared by the assertions below. The launches are real: slow.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import REPO_ROOT, TASK_CONFIGS, encode, make_config, write_config
from safetensors.torch import load_file

from hfmtl.config import config_from_dict
from hfmtl.errors import ConfigError
from hfmtl.run_record import RunRecord

TASKS = ("rte", "stsb", "ner")
METRIC = "eval/rte/accuracy"  # its best, on this data and seed, is neither the first nor the last evaluation
MAX_STEPS, EVERY = 6, 2
EARLY_CHECKPOINT = f"checkpoint-{EVERY}"  # two steps of three tasks: at least one head has not trained


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_fsdp(config: Path, *overrides: str) -> tuple[int, str]:
    """`accelerate launch` of configs/accelerate/fsdp.yaml on 2 processes, through the test shim."""
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or "accelerate"
    cmd = [
        accelerate,
        "launch",
        *("--config_file", str(REPO_ROOT / "configs" / "accelerate" / "fsdp.yaml")),
        *("--num_processes", "2", "--main_process_port", str(_free_port())),
        *("--mixed_precision", "no", "--dynamo_backend", "no"),
        str(REPO_ROOT / "tests" / "fsdp_shim.py"),
        *("--config", str(config), *overrides),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO_ROOT)
    try:
        output, _ = process.communicate(timeout=400)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
    return process.returncode, output


def _run_config(encoder: str, out: Path, **train) -> dict:
    settings = {
        "max_steps": MAX_STEPS,
        "eval_steps": EVERY,
        "save_steps": EVERY,
        "save_total_limit": MAX_STEPS // EVERY,  # every checkpoint is kept: the test reads the best one's
        "logging_steps": EVERY,
        "load_best_model_at_end": True,
        "metric_for_best_model": METRIC,
        **train,
    }
    tasks = {name: TASK_CONFIGS[name] for name in TASKS}
    return make_config(encoder, out, tasks, samples=32, eval_samples=16, **settings)


@pytest.fixture(scope="module")
def trained(tiny_encoder_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("fsdp")
    config = write_config(root / "run.yaml", _run_config(tiny_encoder_dir, root / "out"))
    code, output = launch_fsdp(config)
    assert code == 0, output[-4000:]
    return SimpleNamespace(config=config, out=root / "out", output=output, root=root)


@pytest.fixture(scope="module")
def resumed(trained):
    """The same run, resumed in another output_dir from its early checkpoint (copied there)."""
    out = trained.root / "resumed"
    shutil.copytree(trained.out / "checkpoints" / EARLY_CHECKPOINT, out / "checkpoints" / EARLY_CHECKPOINT)
    code, output = launch_fsdp(trained.config, f"train.output_dir={out}", "train.resume_from_checkpoint=latest")
    assert code == 0, output[-4000:]
    return SimpleNamespace(out=out, output=output)


def _gathered_weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    """The full model weights of a sharded (DCP) FSDP checkpoint, gathered with torch's converter."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    target = checkpoint.parent.parent.parent / f"{checkpoint.name}-gathered.pt"
    dcp_to_torch_save(checkpoint / "pytorch_model_fsdp_0", target)
    return torch.load(target, weights_only=True)["model"]


@pytest.mark.slow
def test_fsdp2_trains_and_evaluates_three_tasks_on_two_processes(trained):
    engines = sorted(
        re.findall(r"process (\d of \d) \(local rank \d, host [^,]+, device cpu[:0-9]*\): (\S+)", trained.output)
    )
    assert engines == [("0 of 2", "FSDP2"), ("1 of 2", "FSDP2")], trained.output[-3000:]
    record = RunRecord.read(trained.out)
    assert record.finished and record.train["num_processes"] == 2
    assert [entry["step"] for entry in record.history] == [2, 4, 6]
    for task in TASKS:  # every task evaluated at every evaluation
        assert all(any(key.startswith(f"eval/{task}/") for key in entry) for entry in record.history), task
    # the checkpoints are FSDP's sharded ones (configs/accelerate/fsdp.yaml: SHARDED_STATE_DICT)
    assert (trained.out / "checkpoints" / "checkpoint-6" / "pytorch_model_fsdp_0" / ".metadata").is_file()


@pytest.mark.slow
def test_the_final_model_holds_the_best_steps_gathered_weights(trained):
    record = RunRecord.read(trained.out)
    best = record.best_step
    assert best not in (None, MAX_STEPS), "the best must not be the last step, or loading it back shows nothing"
    saved = load_file(str(trained.out / "model.safetensors"))
    at_best = _gathered_weights(trained.out / "checkpoints" / f"checkpoint-{best}")
    assert sorted(saved) == sorted(at_best)
    assert all(torch.equal(saved[name], at_best[name]) for name in saved)
    last = _gathered_weights(trained.out / "checkpoints" / f"checkpoint-{MAX_STEPS}")
    assert not all(torch.equal(saved[name], last[name]) for name in saved)
    assert f"Loaded the best model (step {best}," in trained.output
    assert not (trained.out / "best").exists()


@pytest.mark.slow
def test_the_final_model_reloads_through_automodel(trained, tiny_encoder_dir):
    import transformers

    import hfmtl

    model = transformers.AutoModel.from_pretrained(trained.out).eval()
    assert isinstance(model, hfmtl.MultiTaskModel) and sorted(model.config.tasks) == sorted(TASKS)
    saved = load_file(str(trained.out / "model.safetensors"))
    state = model.state_dict()
    assert all(torch.equal(state[name], tensor) for name, tensor in saved.items())
    with torch.no_grad():
        logits = model(**encode(tiny_encoder_dir, "a first sentence", "another one"), task="rte").logits
    assert logits.shape == (2, 2) and torch.isfinite(logits).all()


@pytest.mark.slow
def test_a_resume_from_before_a_head_trained_ends_as_the_uninterrupted_run(trained, resumed):
    import torch.distributed.checkpoint as dcp

    optimizer = trained.out / "checkpoints" / EARLY_CHECKPOINT / "optimizer_0"
    held = dcp.FileSystemReader(str(optimizer)).read_metadata().state_dict_metadata
    untrained = [t for t in TASKS if not any(key.startswith(f"optimizer.state.heads.{t}.") for key in held)]
    assert untrained, "the checkpoint must be one written before some head had trained"
    assert f"Resumed from {resumed.out / 'checkpoints' / EARLY_CHECKPOINT} at step {EVERY}" in resumed.output
    expected, got = load_file(str(trained.out / "model.safetensors")), load_file(str(resumed.out / "model.safetensors"))
    assert sorted(expected) == sorted(got)
    assert all(torch.equal(expected[name], got[name]) for name in expected)
    before, after = RunRecord.read(trained.out), RunRecord.read(resumed.out)
    assert after.history == [entry for entry in before.history if entry["step"] > EVERY]
    assert after.best_step == before.best_step


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
def test_a_refusal_under_fsdp2_comes_from_every_process_before_anything_is_written(trained):
    out = trained.root / "refused"
    code, output = launch_fsdp(
        trained.config, f"train.output_dir={out}", "balancing.step=all_tasks", "balancing.method=pcgrad"
    )
    assert code != 0
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
