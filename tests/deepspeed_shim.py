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

``HFMTL_TEST_CRASH_AT_STEP=N`` kills the run as step N begins (tests/launching.py, which runs the recipe).
"""

from __future__ import annotations

import os
import sys

import torch
from accelerate.state import PartialState
from accelerate.utils import DistributedType
from launching import run_recipe_main  # tests/ is this script's folder, first on sys.path

_prepare_backend = PartialState._prepare_backend


def _prepare_backend_on_cpu(self, cpu=False, sagemaker_dp=False, backend=None):
    launched = int(os.environ.get("LOCAL_RANK", -1)) != -1
    deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
    if launched and deepspeed and not cpu and not torch.cuda.is_available():
        return "gloo", DistributedType.MULTI_CPU
    return _prepare_backend(self, cpu, sagemaker_dp, backend)


if __name__ == "__main__":
    PartialState._prepare_backend = _prepare_backend_on_cpu
    sys.exit(run_recipe_main(sys.argv[1:]))
