"""Test-only: run recipes/train.py under `accelerate launch` with DeepSpeed on CPU processes (gloo).

Accelerate (1.15) sets DeepSpeed up only on an accelerator: on a machine without one, a DeepSpeed launch
gives each process a state of its own ("process 0 of 1"), and DeepSpeed then trips over the world size it
sees itself (docs/scaling.md). This script forces ONE thing: where no accelerator is present and the
launcher asked for DeepSpeed, Accelerate picks the CPU process group (gloo, distributed type MULTI_CPU)
that its own code then turns into DEEPSPEED -- what it does with NCCL on GPUs. Everything after that is
the unpatched path: DeepSpeed's engine (its CPU accelerator), Accelerate's `prepare`, save and load
utilities, and all of hfmtl. Users on GPUs never run this file.

Usage (tests/test_deepspeed.py):
    accelerate launch --config_file configs/accelerate/deepspeed_zero2.yaml tests/deepspeed_shim.py \
        --config run.yaml
"""

from __future__ import annotations

import os
import runpy
import sys
from pathlib import Path

import torch
from accelerate.state import PartialState
from accelerate.utils import DistributedType

_prepare_backend = PartialState._prepare_backend


def _prepare_backend_on_cpu(self, cpu=False, sagemaker_dp=False, backend=None):
    asked = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
    if asked and not cpu and not torch.cuda.is_available() and int(os.environ.get("LOCAL_RANK", -1)) != -1:
        return "gloo", DistributedType.MULTI_CPU
    return _prepare_backend(self, cpu, sagemaker_dp, backend)


if __name__ == "__main__":
    PartialState._prepare_backend = _prepare_backend_on_cpu
    recipe = Path(__file__).resolve().parents[1] / "recipes" / "train.py"
    sys.argv = [str(recipe), *sys.argv[1:]]
    runpy.run_path(str(recipe), run_name="__main__")
