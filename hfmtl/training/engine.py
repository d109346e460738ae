"""The distributed engine a run asked for, against the one its Accelerator set up: a mismatch is an error
before anything is written, never a run that quietly trains another way.

``accelerate launch`` passes its choices to each worker through environment variables
(``ACCELERATE_USE_FSDP``, ``ACCELERATE_USE_DEEPSPEED``; ``WORLD_SIZE`` from torchrun), and the
`Accelerator` reads them. Where it cannot honour one it does not always say so:

- FSDP or DeepSpeed asked for on the CPU (``--cpu`` to the recipe, or no accelerator) gives a plain DDP
  run (MULTI_CPU) or a single process, with the plugin dropped;
- N processes started by the launcher whose Accelerator sets up no process group each believe they are
  process 0 of 1: N independent trainings, all writing the same output_dir.

`refuse_engine_on_cpu` (before the Accelerator is built) and `check_engine` refuse both, on every
process (each sees the same environment, so each raises without waiting for the others). `log_process`
then has every process, not only the main one, say which it is.

Example:
    >>> accelerator = Accelerator(cpu=True)                      # doctest: +SKIP
    >>> check_engine(accelerator); log_process(accelerator)      # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
import socket

from accelerate import Accelerator
from accelerate.utils import DistributedType, parse_flag_from_env

from ..balancing import combines_gradients
from ..config import RunConfig
from ..errors import ConfigError

logger = logging.getLogger("hfmtl")

# launcher variable -> (the engine it asks for, its name for users, how it was asked for)
_REQUESTED_ENGINES = {
    "ACCELERATE_USE_FSDP": (DistributedType.FSDP, "FSDP", "accelerate launch --use_fsdp, or distributed_type: FSDP"),
    "ACCELERATE_USE_DEEPSPEED": (
        DistributedType.DEEPSPEED,
        "DeepSpeed",
        "accelerate launch --use_deepspeed, or distributed_type: DEEPSPEED",
    ),
}
_DDP_ON_CPU = "accelerate launch --multi_gpu --num_processes N recipes/train.py --cpu"


def describe_engine(accelerator: Accelerator) -> str:
    """The engine in words: 'FSDP2', 'DeepSpeed ZeRO-2', 'DDP (MULTI_CPU)', 'a single process (NO)'..."""
    kind = accelerator.distributed_type
    if kind == DistributedType.FSDP:
        return f"FSDP{2 if getattr(accelerator, 'is_fsdp2', False) else 1}"
    if kind == DistributedType.DEEPSPEED:
        stage = accelerator.state.deepspeed_plugin.zero_stage
        return f"DeepSpeed ZeRO-{stage}"
    if kind.value.startswith("MULTI_"):  # MULTI_CPU, MULTI_GPU, MULTI_XPU, ...: DDP
        return f"DDP ({kind.value})"
    return f"a single process ({kind.value})"


def refuse_engine_on_cpu(cpu: bool) -> None:
    """Before the Accelerator is built: an engine asked for with ``--cpu`` to the recipe cannot apply (and
    some of Accelerate's plugins stop with a traceback when they look for a GPU).

    Raises:
        ConfigError: FSDP or DeepSpeed was asked for, and the recipe was told to use the CPU.
    """
    for variable, (_, name, asked) in _REQUESTED_ENGINES.items():
        if cpu and parse_flag_from_env(variable):
            raise ConfigError(_refusal(name, asked, "CPU processes (--cpu)"))


def _refusal(name: str, asked: str, got: str) -> str:
    return (
        f"{name} was asked for ({asked}), but this run has {got}: it would train without {name}; Accelerate "
        f"runs {name} on GPUs (or other accelerators) only -- launch there, or use DDP on the CPU: {_DDP_ON_CPU}"
    )


def check_engine(accelerator: Accelerator) -> None:
    """Refuse a run whose Accelerator is not what the launcher asked for (see the module docstring).

    Raises:
        ConfigError: an engine that was asked for is not the one set up, or the launcher started more
            processes than the Accelerator joined into one run.
    """
    got = describe_engine(accelerator)
    for variable, (engine, name, asked) in _REQUESTED_ENGINES.items():
        if parse_flag_from_env(variable) and accelerator.distributed_type != engine:
            raise ConfigError(_refusal(name, asked, f"{got} on {accelerator.device.type!r}"))
    started = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if started > 1 and accelerator.num_processes != started:
        raise ConfigError(
            f"the launcher started {started} processes (WORLD_SIZE={started}), but this one joined no process "
            f"group: it runs alone as {got}, and each would train on its own into the same train.output_dir; "
            f"on CPUs, pass --cpu to the recipe ({_DDP_ON_CPU}); on GPUs, check that every process sees one"
        )


def check_engine_supports(config: RunConfig, accelerator: Accelerator) -> None:
    """Refuse, before training, what the engine set up cannot do yet (docs/scaling.md lists each):

    - a gradient balancing method (PCGrad, MGDA, ...) under DeepSpeed: it takes per-task gradients with
      ``torch.autograd.grad``, which fires DeepSpeed's gradient-partitioning hooks out of turn;
    - under FSDP2, a gradient balancing method, the uncertainty weighting, and PEFT adapters
      (`_check_fsdp_supports`).

    Raises:
        ConfigError: one of the above; the message names the engine and the alternative.
    """
    kind, engine = accelerator.distributed_type, describe_engine(accelerator)
    method = config.balancing.method
    if kind == DistributedType.DEEPSPEED and combines_gradients(method):
        raise ConfigError(
            f"balancing.method={method!r} combines per-task gradients, which {engine} does not give back "
            "(its hooks partition gradients during backward): use a loss weighting (e.g. balancing.method="
            "equal or uncertainty), or train with DDP"
        )
    if kind == DistributedType.FSDP:
        _check_fsdp_supports(config, engine)


# loss weightings that reach past the sharded model: uncertainty's log-variances are optimizer
# parameters outside it, which Accelerate's FSDP2 preparation cannot switch to sharded ones
_OUTSIDE_THE_SHARDED_MODEL = ("uncertainty",)


def _check_fsdp_supports(config: RunConfig, engine: str) -> None:
    """FSDP2's part of `check_engine_supports`: combined per-task gradients, learned loss weights outside
    the model, and PEFT adapters (saved and loaded unsharded, hfmtl/model/adapters.py) are refused."""
    method = config.balancing.method
    if combines_gradients(method) or method in _OUTSIDE_THE_SHARDED_MODEL:
        what = (
            f"combines per-task gradients of parameters that {engine} shards across processes"
            if combines_gradients(method)
            else f"learns its weights as optimizer parameters outside the model, which {engine} cannot shard"
        )
        raise ConfigError(
            f"balancing.method={method!r} {what}: use a loss weighting without parameters of its own "
            "(e.g. balancing.method=equal, dwa or rlw), or train with DDP"
        )
    if config.peft is not None:
        raise ConfigError(
            f"peft adapters are not supported under {engine} yet (adapters and heads are saved and loaded "
            f"unsharded): train them with DDP (configs/accelerate/ddp.yaml), or leave peft out under {engine}"
        )


def log_process(accelerator: Accelerator) -> None:
    """One INFO line from every process -- also where the logger shows only warnings -- with its rank,
    the world size, the host and the engine: a launch that started fewer processes, or other ones, than
    meant shows in the log."""
    message = "process %d of %d (local rank %d, host %s, device %s): %s"
    args = (
        accelerator.process_index,
        accelerator.num_processes,
        accelerator.local_process_index,
        socket.gethostname(),
        accelerator.device,
        describe_engine(accelerator),
    )
    # `handle` skips the level check only (filters and handlers still apply): the non-main processes log
    # warnings only (setup.py), and this one line must come from each of them
    logger.handle(logger.makeRecord(logger.name, logging.INFO, __file__, 0, message, args, None))
