"""Test-only: recipes/train.py under `accelerate launch` with DeepSpeed, on CPU processes (gloo).

Accelerate (1.15) builds its DeepSpeed state only on an accelerator. Without one, a DeepSpeed launch picks
no process group: each process is "process 0 of 1" to Accelerate while DeepSpeed sees 2, and its batch-size
check fails (``8 != 8 * 1 * 2``). This script changes ONE choice, where no accelerator is present and the
launcher asked for DeepSpeed: the process group Accelerate prepares is the CPU's (gloo, ``MULTI_CPU``),
which its own code then turns into ``DEEPSPEED`` -- as it does with NCCL on GPUs. Everything after that is
the unpatched path: DeepSpeed's engine on its CPU accelerator, Accelerate's `prepare`, `save_state`,
`load_state` and `get_state_dict`, and all of hfmtl (which sees a DeepSpeed run on a ``cpu`` device).
Users never run this file: on GPUs, Accelerate picks NCCL itself (docs/scaling.md).

    accelerate launch --config_file configs/accelerate/deepspeed_zero2.yaml tests/deepspeed_shim.py \
        --config run.yaml [section.key=value ...]

``HFMTL_TEST_CRASH_AT_STEP=N`` in the environment adds conftest's `CrashAt(N)` to the run's callbacks, as
`conftest.run_recipe` passes it in-process: the run dies as step N begins, for a resume to continue.
"""

from __future__ import annotations

import os
import runpy
import sys
from pathlib import Path

import torch
from accelerate.state import PartialState
from accelerate.utils import DistributedType

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "train.py"
_prepare_backend = PartialState._prepare_backend


def _prepare_backend_on_cpu(self, cpu=False, sagemaker_dp=False, backend=None):
    launched = int(os.environ.get("LOCAL_RANK", -1)) != -1
    deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
    if launched and deepspeed and not cpu and not torch.cuda.is_available():
        return "gloo", DistributedType.MULTI_CPU
    return _prepare_backend(self, cpu, sagemaker_dp, backend)


def main() -> int:
    from conftest import CrashAt  # tests/ is this script's folder, first on sys.path

    from hfmtl.errors import exit_status_of

    PartialState._prepare_backend = _prepare_backend_on_cpu
    recipe = runpy.run_path(str(RECIPE), run_name="recipe_train")
    crash = os.environ.get("HFMTL_TEST_CRASH_AT_STEP")
    callbacks = [CrashAt(int(crash))] if crash else []
    return exit_status_of(lambda: recipe["run"](recipe["parse_args"](sys.argv[1:]), callbacks) and 0)


if __name__ == "__main__":
    sys.exit(main())
