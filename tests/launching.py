"""Test-only: `accelerate launch` of 2 (or more) processes for the launch tests, in one place.

    accelerate_launch(["recipes/train.py", "--cpu", "--config", "run.yaml"], multi_gpu=True)
    subprocess.Popen(accelerate_command([...], multi_gpu=True), env=launch_environment(), ...)
    accelerate_launch([SHIM, "--config", "run.yaml"], config_file=DEEPSPEED_ZERO2, crash_at=3)

Run as a script, this file is recipes/train.py with one test addition: ``HFMTL_TEST_CRASH_AT_STEP=N``
in the environment (`accelerate_launch(..., crash_at=N)`) adds conftest's `CrashAt(N)` to the run's
callbacks, as `conftest.run_recipe` passes it in-process: every process dies as step N begins, a kill
for a resume to continue from. The engine shims (tests/fsdp_shim.py, tests/deepspeed_shim.py) run the
recipe through `run_recipe_main` too.

    accelerate launch --config_file configs/accelerate/ddp.yaml tests/launching.py --cpu --config run.yaml
"""

from __future__ import annotations

import os
import runpy
import shutil
import socket
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
RECIPE = REPO_ROOT / "recipes" / "train.py"
ACCELERATE_CONFIGS = REPO_ROOT / "configs" / "accelerate"
CRASH_VARIABLE = "HFMTL_TEST_CRASH_AT_STEP"


def free_port() -> int:
    """A TCP port free on localhost now, for a launch's ``--main_process_port``."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def accelerate_command(
    script_args: Sequence[str | Path],
    *,
    config_file: str | Path | None = None,
    multi_gpu: bool = False,
    processes: int | None = 2,
    launcher_args: Sequence[str] = (),
    port: int | None = None,
    mixed_precision: str = "no",
    dynamo_backend: str = "no",
) -> list[str]:
    """The `accelerate launch` command line of `script_args` (the script, then its arguments).

    Args:
        script_args: the launched script and its arguments.
        config_file: an Accelerate config (e.g. one of configs/accelerate/); None uses the flags only.
        multi_gpu: pass ``--multi_gpu --num_machines 1`` (DDP; on CPU processes with the recipe's ``--cpu``).
        processes: ``--num_processes``; None leaves it to `config_file` or `launcher_args`.
        launcher_args: more of the launcher's own flags (``--use_fsdp``, ``--machine_rank 1``, ...).
        port: ``--main_process_port``; None takes a free one (launches sharing one rendezvous pass theirs).
        mixed_precision: ``--mixed_precision``; the launcher's own default would ask its config file.
        dynamo_backend: ``--dynamo_backend``, as `mixed_precision`.
    """
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or "accelerate"
    cmd = [accelerate, "launch"]
    if config_file is not None:
        cmd += ["--config_file", str(config_file)]
    if multi_gpu:
        cmd += ["--multi_gpu", "--num_machines", "1"]
    if processes is not None:
        cmd += ["--num_processes", str(processes)]
    cmd += [*launcher_args, "--mixed_precision", mixed_precision, "--dynamo_backend", dynamo_backend]
    cmd += ["--main_process_port", str(free_port() if port is None else port)]
    return cmd + [str(arg) for arg in script_args]


def launch_environment(*, crash_at: int | None = None, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment for a launch: one thread per process (2 processes share few cores),
    `env` on top, and ``HFMTL_TEST_CRASH_AT_STEP`` set to `crash_at` (or removed)."""
    environment = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    if crash_at is not None:
        environment[CRASH_VARIABLE] = str(crash_at)
    else:
        environment.pop(CRASH_VARIABLE, None)
    return environment


def accelerate_launch(
    script_args: Sequence[str | Path],
    *,
    crash_at: int | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = 600,
    **command,
) -> subprocess.CompletedProcess:
    """`accelerate launch` of `script_args` from the repository root, run to its end.

    Args:
        script_args: the launched script and its arguments.
        crash_at: every process dies as this step begins (``HFMTL_TEST_CRASH_AT_STEP``, read when the
            script is this file or an engine shim).
        env: more environment variables for the processes.
        timeout: seconds before the launch is killed; its output until then is still returned.
        **command: `accelerate_command`'s options (config_file, multi_gpu, processes, ...).

    Returns:
        The finished process, ``stdout`` and ``stderr`` captured as text.
    """
    cmd = accelerate_command(script_args, **command)
    environment = launch_environment(crash_at=crash_at, env=env)
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=environment, cwd=REPO_ROOT)
    except subprocess.TimeoutExpired as expired:  # what it wrote until then says where it hung
        out, err = (
            part.decode() if isinstance(part, bytes) else part or "" for part in (expired.stdout, expired.stderr)
        )
        return subprocess.CompletedProcess(cmd, -9, out, err + f"\n(killed after {timeout} s)")


def output_of(done: subprocess.CompletedProcess) -> str:
    """A launch's stdout and stderr, in one text."""
    return done.stdout + done.stderr


def run_recipe_main(argv: Sequence[str]) -> int:
    """recipes/train.py's `run` on `argv`, with `CrashAt` where ``HFMTL_TEST_CRASH_AT_STEP`` asks for it;
    the exit status the recipe itself would give."""
    from conftest import CrashAt  # tests/ is the launched script's folder, first on sys.path

    from hfmtl.errors import exit_status_of

    recipe = runpy.run_path(str(RECIPE), run_name="recipe_train")
    crash = os.environ.get(CRASH_VARIABLE)
    callbacks = [CrashAt(int(crash))] if crash else []
    return exit_status_of(lambda: recipe["run"](recipe["parse_args"](list(argv)), callbacks) and 0)


if __name__ == "__main__":
    sys.exit(run_recipe_main(sys.argv[1:]))
