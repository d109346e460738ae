"""Every file in configs/ loads and validates, with today's key names, and opens with the command that
runs it; the commands its opening comment gives (with their overrides) load too."""

from __future__ import annotations

import logging
import re
import shlex
from pathlib import Path

import pytest
from conftest import REPO_ROOT

from hfmtl.config import load_config

CONFIGS = sorted((REPO_ROOT / "configs").glob("*.yaml"))


def _opening_comment(path: Path) -> list[str]:
    lines = path.read_text().splitlines()
    end = next(i for i, line in enumerate(lines) if not line.startswith("#"))
    return lines[:end]


def _commands(path: Path) -> list[list[str]]:
    """The overrides of each command in the opening comment that runs this config."""
    pattern = re.compile(rf"(?:recipes/train\.py --config|hfmtl train) configs/{re.escape(path.name)}(.*)$")
    found = [pattern.search(line) for line in _opening_comment(path)]
    return [shlex.split(match.group(1)) for match in found if match]


def test_there_are_configs() -> None:
    assert len(CONFIGS) >= 6, [p.name for p in CONFIGS]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_loads_with_current_key_names(path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="hfmtl"):
        config = load_config(path)
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING], "a deprecated key?"
    assert config.tasks and config.train.output_dir.startswith("outputs/")


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_opens_with_the_command_that_runs_it(path: Path) -> None:
    comment = _opening_comment(path)
    assert comment, f"{path.name} must open with a comment giving the command that runs it"
    commands = _commands(path)
    assert commands, f"{path.name}: no `recipes/train.py --config configs/{path.name}` in {comment}"
    for overrides in commands:
        load_config(path, overrides)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_data_files_exist(path: Path) -> None:
    config = load_config(path)
    for name, task in config.tasks.items():
        for split, files in (task.data_files or {}).items():
            for file in [files] if isinstance(files, str) else files:
                assert (REPO_ROOT / file).is_file(), f"{path.name}: tasks.{name}.data_files.{split}: {file}"
