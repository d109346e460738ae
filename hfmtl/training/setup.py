"""The run's `Accelerator`: precision, compilation, accumulation and trackers.

What the run config says wins; what it leaves unset (``train.mixed_precision``, ``train.torch_compile``)
is the launcher's to decide: ``accelerate launch --mixed_precision bf16 --dynamo_backend inductor`` and
``accelerate config`` reach the Accelerator through their environment variables. The log names the
source of each. A setting that cannot apply is an error before anything trains, never a quiet fp32 or
uncompiled run: fp16 on a device without fp16 autocast (the CPU) is refused.

Example:
    >>> accelerator = build_accelerator(load_config("configs/tiny.yaml"), cpu=True)  # doctest: +SKIP
    >>> accelerator.mixed_precision                                                # doctest: +SKIP
    'no'
"""

from __future__ import annotations

import logging
import os
import sys
from logging.handlers import MemoryHandler
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import (
    DistributedDataParallelKwargs,
    DistributedType,
    DynamoBackend,
    GradientAccumulationPlugin,
    TorchDynamoPlugin,
)

from ..config import RunConfig
from ..errors import ConfigError
from .deepspeed_config import align_deepspeed_config
from .engine import check_engine, check_engine_supports, describe_engine, log_process, refuse_engine_on_cpu
from .run_lock import LOCK_FILE

logger = logging.getLogger("hfmtl")

# what `accelerate launch` (its flags, else the `accelerate config` file) sets for the Accelerator
_LAUNCHER_PRECISION = "ACCELERATE_MIXED_PRECISION"
_LAUNCHER_DYNAMO = "ACCELERATE_DYNAMO_BACKEND"


def build_accelerator(config: RunConfig, cpu: bool = False) -> Accelerator:
    """The run's Accelerator, from the config and, where it is silent, the launcher; logging starts
    with it (INFO on the main process, see `setup_logging`), and its first lines say what was resolved.

    Args:
        config: the run config.
        cpu: force the CPU (also for several processes: gloo DDP on CPU).

    Raises:
        ConfigError: the precision or compile backend cannot apply here, or the engine the launcher
            asked for is not the one the Accelerator set up (engine.py).
    """
    train = config.train
    precision_source = _precision_source(config)
    dynamo_plugin, compile_source = _dynamo_plugin(config)
    refuse_engine_on_cpu(cpu)
    try:
        accelerator = Accelerator(
            cpu=cpu,
            mixed_precision=train.mixed_precision,  # None: the launcher's, else "no"
            dynamo_plugin=dynamo_plugin,
            # the loop, not the dataloader, decides when an accumulation window ends: several task loaders
            # run out at different times, and a loader's end must not force an early optimizer step
            gradient_accumulation_plugin=GradientAccumulationPlugin(
                num_steps=train.gradient_accumulation_steps, sync_with_dataloader=False
            ),
            # the heads of the tasks not drawn at a step get no gradient; DDP must be told so
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=len(config.tasks) > 1)],
            log_with=train.report_to or None,
            project_dir=train.output_dir,
        )
    except (ValueError, RuntimeError) as err:  # Accelerate's refusals (bf16 on an old GPU, FSDP without a GPU...)
        raise ConfigError(f"the Accelerator cannot be set up: {' '.join(str(err).split())}") from err
    setup_logging(accelerator)
    check_engine(accelerator)
    check_engine_supports(config, accelerator)
    align_deepspeed_config(config, accelerator)  # DeepSpeed clips and accumulates by its own config
    _refuse_precision_without_autocast(accelerator, precision_source)
    log_process(accelerator)
    logger.info(
        "mixed precision %s (from %s); torch.compile %s (from %s); %d process(es), %s",
        accelerator.mixed_precision,
        precision_source,
        compile_backend(accelerator) or "off",
        compile_source,
        accelerator.num_processes,
        describe_engine(accelerator),
    )
    return accelerator


def compile_backend(accelerator: Accelerator) -> str | None:
    """The torch.compile backend the Accelerator compiles the model with, or None when it does not."""
    backend = accelerator.state.dynamo_plugin.backend
    return None if backend == DynamoBackend.NO else backend.value.lower()


def _precision_source(config: RunConfig) -> str:
    if config.train.mixed_precision is not None:
        return "train.mixed_precision"
    if os.environ.get(_LAUNCHER_PRECISION):
        return "the launcher (accelerate launch / accelerate config)"
    return "the default"


def _dynamo_plugin(config: RunConfig) -> tuple[TorchDynamoPlugin, str]:
    """Accelerate's dynamo plugin for the config's compile settings, and where they came from."""
    train = config.train
    compile_asked = train.torch_compile or (train.torch_compile is None and train.torch_compile_backend is not None)
    if train.torch_compile is False:
        return TorchDynamoPlugin(backend="no"), "train.torch_compile"
    if not compile_asked:
        source = (
            "the launcher (accelerate launch / accelerate config)"
            if os.environ.get(_LAUNCHER_DYNAMO)
            else "the default"
        )
        return TorchDynamoPlugin(), source  # reads the launcher's variables
    backend = (train.torch_compile_backend or "inductor").upper()
    if backend not in DynamoBackend.__members__ or backend == "NO":
        choices = ", ".join(repr(b.lower()) for b in DynamoBackend.__members__ if b != "NO")
        raise ConfigError(
            f"train.torch_compile_backend={train.torch_compile_backend!r} is not allowed; choose one of {choices}"
        )
    kwargs: dict[str, Any] = {"backend": backend}
    if train.torch_compile_mode is not None:
        kwargs["mode"] = train.torch_compile_mode
    return TorchDynamoPlugin(**kwargs), "train.torch_compile"


def _refuse_precision_without_autocast(accelerator: Accelerator, source: str) -> None:
    """fp16 on the CPU: Accelerate accepts it, enables no autocast and trains in fp32. Refuse instead."""
    engines_with_own_precision = (DistributedType.DEEPSPEED, DistributedType.MEGATRON_LM)
    if (
        accelerator.mixed_precision == "fp16"
        and not accelerator.native_amp
        and accelerator.distributed_type not in engines_with_own_precision
    ):
        raise ConfigError(
            f"mixed precision fp16 (from {source}) has no autocast on {accelerator.device.type!r}: it would "
            "train in fp32; use bf16 or no there (train.mixed_precision or accelerate launch --mixed_precision)"
        )


def check_output_dir(config: RunConfig) -> None:
    """Refuse to write into a non-empty output_dir unless resuming or told to overwrite. A run's lock file
    alone does not count: whether its owner still runs is the lock's to say (run_lock.py)."""
    args = config.train
    path = Path(args.output_dir)
    if path.is_file():
        raise ConfigError(f"train.output_dir={args.output_dir!r} is a file")
    written = path.is_dir() and any(p.name != LOCK_FILE for p in path.iterdir())
    if written and not (args.resume_from_checkpoint or args.overwrite_output_dir):
        raise ConfigError(
            f"train.output_dir={args.output_dir!r} is not empty; set train.overwrite_output_dir=true, "
            "train.resume_from_checkpoint=latest, or another output_dir"
        )


def setup_logging(accelerator: Accelerator, log_file: str | Path | None = None) -> None:
    """INFO logs on the main process (to stderr and, if given, `log_file`); warnings only elsewhere."""
    import datasets
    import transformers

    level = logging.INFO if accelerator.is_main_process else logging.WARNING
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S")
    logger.setLevel(level)
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        stream = _StderrHandler()
        stream.setFormatter(fmt)
        logger.addHandler(stream)
    # One log file at a time (a staged run has one per stage). A run logs before its output directory
    # may be written (everything is validated first): those records wait in memory and go to the file
    # once it exists, so train.log holds the whole run.
    for handler in [h for h in logger.handlers if isinstance(h, logging.FileHandler)]:
        logger.removeHandler(handler)
        handler.close()
    buffer = next((h for h in logger.handlers if isinstance(h, MemoryHandler)), None)
    if accelerator.is_main_process and log_file is None and buffer is None:
        logger.addHandler(MemoryHandler(capacity=100_000, flushLevel=logging.CRITICAL + 1))
    if accelerator.is_main_process and log_file is not None:
        handler = logging.FileHandler(log_file)
        handler.setFormatter(fmt)
        logger.addHandler(handler)
        if buffer is not None:
            buffer.setTarget(handler)
            buffer.flush()
            logger.removeHandler(buffer)
            buffer.close()
    logger.propagate = False
    # the libraries' own progress bars stay; their INFO chatter goes
    transformers.utils.logging.set_verbosity_error()
    datasets.utils.logging.set_verbosity_warning()


class _StderrHandler(logging.StreamHandler):
    """Writes to the `sys.stderr` of the moment a record is emitted, not the one it was created with: a
    notebook or a test harness swaps sys.stderr, and a handler holding a closed one fails on every record."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler's constructor sets it; the property decides
        pass


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of this process: allocated GPU memory on CUDA, else the peak resident set size
    (which includes everything the process held, the datasets too)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def flat_hparams(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Scalars of a nested config as ``a/b/c`` keys (trackers such as TensorBoard take flat scalars)."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flat_hparams(value, f"{name}/"))
        elif isinstance(value, (int, float, str, bool)):
            flat[name] = value
        elif isinstance(value, list):
            flat[name] = ",".join(map(str, value))
    return flat


def training_summary(
    accelerator: Accelerator,
    steps: int,
    runtime_seconds: float,
    evaluation_seconds: float,
    nonfinite_skipped_steps: int | None = None,
) -> dict[str, Any]:
    """The run record's ``train`` entry: what the finished training took and used (the config may have
    left precision and compilation to the launcher), and the steps it skipped for a non-finite loss
    (``train.nonfinite: skip``; `StepRunner.skipped_steps`; left out when not given)."""
    summary = {
        "steps": steps,
        "runtime_seconds": round(runtime_seconds, 1),
        "evaluation_seconds": round(evaluation_seconds, 1),
        "peak_memory_mb": round(peak_memory_mb(accelerator.device)),
        "mixed_precision": accelerator.mixed_precision,
        "torch_compile": compile_backend(accelerator),
        "num_processes": accelerator.num_processes,
    }
    if nonfinite_skipped_steps is not None:
        summary["nonfinite_skipped_steps"] = nonfinite_skipped_steps
    return summary
