"""Test-only: recipes/train.py under real FSDP2 on CPU processes (gloo), for the launch tests of
tests/test_fsdp.py. Not part of hfmtl; users on GPUs launch recipes/train.py itself.

    accelerate launch --config_file configs/accelerate/fsdp.yaml --num_processes 2 \
        tests/fsdp_shim.py --config run.yaml

Accelerate 1.15 builds FSDP only for accelerator processes (MULTI_GPU, MULTI_XPU, ...): on the CPU it
sets up gloo DDP and drops the plugin, which hfmtl refuses (hfmtl/training/engine.py). torch's FSDP2
(`fully_shard`) itself runs on gloo. This shim forces exactly two things, then runs the recipe
unchanged (no ``--cpu``):

- ``ACCELERATE_USE_CPU``: Accelerate's state takes the CPU path (a gloo process group, device ``cpu``),
  as the recipe's ``--cpu`` would -- which engine.py rightly refuses together with FSDP for users;
- after `AcceleratorState` is built, the FSDP distributed type and the plugin the Accelerator built
  from the launcher's settings: the two assignments Accelerate makes itself for GPU processes.

``HFMTL_TEST_CRASH_AT_STEP=N`` kills the run as step N begins (tests/launching.py, which runs the recipe).

Everything else -- the FSDP plugin from fsdp.yaml, `Accelerator.prepare` (``fully_shard``), sharded
checkpoints, state-dict gathering, hfmtl's engine checks and weight loading -- is the real code path.
"""

from __future__ import annotations

import os
import sys

from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import DistributedType
from launching import run_recipe_main  # tests/ is this script's folder, first on sys.path

_build_state = AcceleratorState.__init__


def _state_with_fsdp_on_cpu(self, *args, fsdp_plugin=None, **kwargs) -> None:
    _build_state(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
    if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
        self.distributed_type = DistributedType.FSDP
        self.fsdp_plugin = fsdp_plugin
        PartialState._shared_state["distributed_type"] = DistributedType.FSDP


if __name__ == "__main__":
    os.environ["ACCELERATE_USE_CPU"] = "true"
    AcceleratorState.__init__ = _state_with_fsdp_on_cpu
    sys.exit(run_recipe_main(sys.argv[1:]))
