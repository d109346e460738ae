"""What a run needs around the training loop: its logs and a safe output directory."""

from __future__ import annotations

import logging
from pathlib import Path

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
    if not logger.handlers:
        stream = logging.StreamHandler()
        stream.setFormatter(fmt)
        logger.addHandler(stream)
    if log_file is not None and accelerator.is_main_process:
        handler = logging.FileHandler(log_file)
        handler.setFormatter(fmt)
        logger.addHandler(handler)
    logger.propagate = False
    # the libraries' own progress bars stay; their INFO chatter goes
    transformers.utils.logging.set_verbosity_error()
    datasets.utils.logging.set_verbosity_warning()
