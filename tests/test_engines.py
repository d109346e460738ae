"""The distributed engine: the Accelerate config files in configs/accelerate/, what a launch that cannot
apply does (a one-line error on every process before anything is written, never another engine in its
place), every process naming itself in the log, and a run across two "machines" on localhost.

The launches are real (`accelerate launch`, gloo on the CPU): slow.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import REPO_ROOT, TASK_CONFIGS, make_config, reset_accelerate_state, write_config
from launching import accelerate_command, free_port, launch_environment

from hfmtl.config import config_from_dict
from hfmtl.errors import ConfigError
from hfmtl.run_record import RunRecord
from hfmtl.training.setup import build_accelerator

ACCELERATE_CONFIGS = sorted((REPO_ROOT / "configs" / "accelerate").glob("*.yaml"))
EXPECTED_TYPE = {
    "ddp": "MULTI_GPU",
    "fsdp": "FSDP",
    "deepspeed_zero2": "DEEPSPEED",
    "deepspeed_zero3": "DEEPSPEED",
    "multi_node": "MULTI_GPU",
}


def test_every_engine_has_a_config_file():
    assert sorted(p.stem for p in ACCELERATE_CONFIGS) == sorted(EXPECTED_TYPE)


@pytest.mark.parametrize("path", ACCELERATE_CONFIGS, ids=lambda p: p.stem)
def test_an_accelerate_config_loads_and_opens_with_its_command(path: Path):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(path))  # what `accelerate launch --config_file` reads
    assert config.distributed_type.value == EXPECTED_TYPE[path.stem]
    comment = "".join(line for line in path.read_text().splitlines(keepends=True) if line.startswith("#"))
    assert f"accelerate launch --config_file configs/accelerate/{path.name}" in comment
    if path.stem == "fsdp":
        assert config.fsdp_config["fsdp_version"] == 2
        assert config.fsdp_config["fsdp_state_dict_type"] == "SHARDED_STATE_DICT"
    if path.stem.startswith("deepspeed"):
        assert config.deepspeed_config["zero_stage"] == int(path.stem[-1])


def _tiny_config(encoder: str, out: Path):
    return config_from_dict(make_config(encoder, out, {"rte": TASK_CONFIGS["rte"]}, max_steps=2))


@pytest.mark.parametrize(
    ("variable", "name"), [("ACCELERATE_USE_FSDP", "FSDP"), ("ACCELERATE_USE_DEEPSPEED", "DeepSpeed")]
)
def test_an_engine_asked_for_on_the_cpu_is_refused_before_the_accelerator(
    variable, name, tiny_encoder_dir, tmp_path, monkeypatch
):
    monkeypatch.setenv(variable, "true")
    reset_accelerate_state()
    with pytest.raises(ConfigError, match=rf"^{name} was asked for .* it would train without {name}.*--multi_gpu"):
        build_accelerator(_tiny_config(tiny_encoder_dir, tmp_path / "out"), cpu=True)
    assert not (tmp_path / "out").exists()


def test_every_process_names_itself_even_where_only_warnings_are_logged(tiny_encoder_dir, tmp_path, capsys):
    import logging

    reset_accelerate_state()
    accelerator = build_accelerator(_tiny_config(tiny_encoder_dir, tmp_path / "out"), cpu=True)
    logging.getLogger("hfmtl").setLevel(logging.WARNING)  # as on a process other than the main one
    from hfmtl.training.engine import log_process

    log_process(accelerator)
    assert re.search(
        r"INFO hfmtl: process 0 of 1 \(local rank 0, host .*\): a single process \(NO\)", capsys.readouterr().err
    )


def _engine(kind: str, zero_stage: int | None = None):
    """Just what `check_engine_supports` reads of an Accelerator: FSDP and DeepSpeed need GPUs to build."""
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    plugin = SimpleNamespace(zero_stage=zero_stage)
    return SimpleNamespace(
        distributed_type=DistributedType[kind], is_fsdp2=True, state=SimpleNamespace(deepspeed_plugin=plugin)
    )


@pytest.mark.parametrize(
    ("engine", "overrides", "expected"),
    [
        (
            ("DEEPSPEED", 2),
            {"balancing": {"step": "all_tasks", "method": "pcgrad"}},
            "balancing.method='pcgrad' combines",
        ),
    ],
    ids=["deepspeed-pcgrad"],
)
def test_what_an_engine_cannot_do_is_refused_before_training(engine, overrides, expected, tiny_encoder_dir, tmp_path):
    from hfmtl.training.engine import check_engine_supports

    data = make_config(tiny_encoder_dir, tmp_path, {"rte": TASK_CONFIGS["rte"]}, load_best_model_at_end=True)
    with pytest.raises(ConfigError, match=re.escape(expected)):
        check_engine_supports(config_from_dict({**data, **overrides}), _engine(*engine))


@pytest.mark.parametrize(
    ("engine", "train", "balancing"),
    [
        (("FSDP",), {"load_best_model_at_end": True}, {"step": "all_tasks", "method": "dwa"}),
        (("DEEPSPEED", 2), {"load_best_model_at_end": True}, {"step": "all_tasks", "method": "uncertainty"}),
        (("DEEPSPEED", 3), {"load_best_model_at_end": True}, {"step": "one_task", "method": "equal"}),
        (("MULTI_CPU",), {"load_best_model_at_end": True}, {"step": "all_tasks", "method": "pcgrad"}),
    ],
    ids=["fsdp-best-model", "zero2-loss-weighting", "zero3-best-model", "ddp-anything"],
)
def test_what_an_engine_can_do_passes(engine, train, balancing, tiny_encoder_dir, tmp_path):
    from hfmtl.training.engine import check_engine_supports

    data = make_config(tiny_encoder_dir, tmp_path, {"rte": TASK_CONFIGS["rte"]}, **train)
    check_engine_supports(config_from_dict({**data, "balancing": balancing}), _engine(*engine))


# --- real launches ------------------------------------------------------------------------------------


def _launch(launcher_args: list[str], config: Path, *recipe_args: str, port: int | None = None) -> subprocess.Popen:
    script = [REPO_ROOT / "recipes" / "train.py", *recipe_args, "--config", config]
    cmd = accelerate_command(script, processes=None, launcher_args=launcher_args, port=port)
    env = launch_environment()
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO_ROOT)


def _finish(process: subprocess.Popen) -> tuple[int, str]:
    try:
        output, _ = process.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
    return process.returncode, output


def _write(tmp_path: Path, encoder: str, **train) -> tuple[Path, Path]:
    out = tmp_path / "out"
    tasks = {"rte": TASK_CONFIGS["rte"], "stsb": TASK_CONFIGS["stsb"]}
    settings = {"max_steps": 4, "eval_steps": 4, "logging_steps": 2, **train}
    return write_config(
        tmp_path / "run.yaml", make_config(encoder, out, tasks, samples=32, eval_samples=16, **settings)
    ), out


def _process_lines(output: str) -> list[str]:
    return sorted(re.findall(r"process (\d of \d) \(local rank \d, host [^,]+, device cpu[:0-9]*\): (.*)", output))


# The shipped ddp.yaml training two CPU processes through recipes/train.py: tests/test_ddp.py.


@pytest.mark.slow
@pytest.mark.parametrize(
    ("launcher", "recipe_args", "expected"),
    [
        # the shipped FSDP config on CPU processes: Accelerate would build DDP; refused
        (["--config_file", "configs/accelerate/fsdp.yaml"], ["--cpu"], "FSDP was asked for"),
        # FSDP's launcher defaults look for a GPU in the plugin's constructor: one line, not its traceback
        (["--use_fsdp", "--num_processes", "2"], [], "the Accelerator cannot be set up: There are currently no"),
        # two processes without --cpu on a machine without GPUs: each would be a run of its own
        (["--multi_gpu", "--num_processes", "2"], [], "the launcher started 2 processes (WORLD_SIZE=2)"),
    ],
    ids=["fsdp-config-on-cpu", "use-fsdp-without-a-gpu", "two-lone-processes"],
)
def test_a_launch_that_cannot_apply_is_one_line_on_every_process(
    launcher, recipe_args, expected, tiny_encoder_dir, tmp_path
):
    if "--cpu" not in recipe_args and _has_accelerator():
        pytest.skip("this launch is only wrong on a machine without GPUs")
    config, out = _write(tmp_path, tiny_encoder_dir)
    code, output = _finish(_launch(launcher, config, *recipe_args))
    assert code != 0
    # one error from each process (their lines may interleave in the shared pipe: count, don't split)
    assert output.count("error: ") == 2 and output.count(expected) == 2, output[-3000:]
    assert "Traceback" not in output.split("error: ")[0]  # none of ours (the launcher's own may follow)
    assert not out.exists()  # nothing written


def _has_accelerator() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.slow
def test_two_machines_on_localhost_train_one_run(tiny_encoder_dir, tmp_path):
    """configs/accelerate/multi_node.yaml's launch, both "machines" on this one: each starts one process."""
    config, out = _write(tmp_path, tiny_encoder_dir)
    port = free_port()
    nodes = [
        _launch(
            [
                *("--config_file", str(REPO_ROOT / "configs/accelerate/multi_node.yaml")),
                *("--num_processes", "2", "--machine_rank", str(rank)),
                *("--main_process_ip", "127.0.0.1"),
            ],
            config,
            "--cpu",
            port=port,
        )
        for rank in (0, 1)
    ]
    results = [_finish(node) for node in nodes]
    for code, output in results:
        assert code == 0, output[-3000:]
    lines = _process_lines(results[0][1]) + _process_lines(results[1][1])
    assert sorted(line[0] for line in lines) == ["0 of 2", "1 of 2"], [r[1][-2000:] for r in results]
    record = RunRecord.read(out)
    assert record.finished and record.train["num_processes"] == 2
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["max_steps"] == 4
