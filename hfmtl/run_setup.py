"""What a run needs around the training loop: its logs, a safe output directory, and what it reports
(peak memory, flat hyper-parameters for trackers)."""

from __future__ import annotations

import logging
from logging.handlers import MemoryHandler
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator

from .config import RunConfig
from .errors import ConfigError

logger = logging.getLogger("hfmtl")


def check_output_dir(config: RunConfig) -> None:
    """Refuse to write into a non-empty output_dir unless resuming or told to overwrite."""
    args = config.train
    path = Path(args.output_dir)
    if path.is_file():
        raise ConfigError(f"train.output_dir={args.output_dir!r} is a file")
    if path.is_dir() and any(path.iterdir()) and not (args.resume_from_checkpoint or args.overwrite_output_dir):
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
    if not any(type(h) is logging.StreamHandler for h in logger.handlers):
        stream = logging.StreamHandler()
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
