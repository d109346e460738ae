"""What DeepSpeed ZeRO-3's partitioned parameters ask of a multi-task run: loading saved weights into them,
and clearing the gradients of the heads a step did not use.

ZeRO-3 partitions every parameter across the processes: between forward passes each process holds a flat
slice of it, and the module's ``weight`` is an empty placeholder (shape ``[0]``).

- **Loading weights.** A plain ``load_state_dict`` of a full state dict stops with a size mismatch against
  the placeholders. DeepSpeed's way in is `deepspeed.zero.GatheredParameters`: inside it every parameter is
  whole on every process; with ``modifier_rank=0`` what process 0 holds when it exits is written back into
  every process's partition. Every process loads the same file inside it, so the buffers, which ZeRO does
  not partition, agree everywhere too.
- **Unused heads.** ZeRO-3 reduces each parameter's gradient into its slot of one flat buffer and hands
  the whole buffer to the optimizer; a parameter that got no gradient this step (the heads of the tasks
  not drawn) keeps the slot's old content, the gradient of the last step that used it, and the optimizer
  applies it again. A checkpoint does not hold that buffer, so a resumed run would not even repeat it.
  `clear_unused_gradients` zeroes the buffer after each optimizer step: a head not trained in a step gets
  a zero gradient, as under ZeRO-2, and a resume continues exactly.

Under every other engine (one process, DDP, ZeRO-1/2, whose parameters stay whole) both are no-ops or the
model's own `MultiTaskModel.load_weights`.

Example:
    >>> load_weights(trainer.accelerator, trainer.unwrapped_model(), "outputs/glue/best")  # doctest: +SKIP
"""

from __future__ import annotations

import os

from accelerate import Accelerator
from accelerate.utils import DistributedType
from torch import nn


def partitions_parameters(accelerator: Accelerator) -> bool:
    """Whether the run's parameters are partitioned by DeepSpeed ZeRO-3 (not whole on any process)."""
    kind = accelerator.distributed_type
    return kind == DistributedType.DEEPSPEED and accelerator.state.deepspeed_plugin.zero_stage == 3


def load_weights(accelerator: Accelerator, model: nn.Module, directory: str | os.PathLike) -> None:
    """Load the weights `save_pretrained` wrote into `directory` into the unwrapped `model`, in place.
    Call on every process (under ZeRO-3 the gathering is collective)."""
    if not partitions_parameters(accelerator):
        model.load_weights(directory)
        return
    import deepspeed  # installed wherever a ZeRO-3 run was set up

    with deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=0):
        model.load_weights(directory)


def clear_unused_gradients(accelerator: Accelerator, engine: nn.Module) -> None:
    """After an optimizer step under ZeRO-3: zero the flat gradient buffer of the prepared `engine`
    (a ``DeepSpeedEngine``), so that no parameter's old gradient is applied again (module docstring).
    Call on every process; elsewhere it does nothing."""
    if accelerator.sync_gradients and partitions_parameters(accelerator):
        engine.optimizer.grad_partitions_flat_buffer.zero_()
