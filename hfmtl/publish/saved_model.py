"""A saved hfmtl model directory, read: its config, run config, metrics, and where its weights came from.

What the model card and the Hub upload need to know about a model directory, from its files alone:
``config.json`` (tasks, heads, PEFT base), ``config.yaml`` (the run), ``metrics.json`` (evaluations),
and the chain of `init_from` directories of a staged or continued run.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

from ..errors import HfmtlError
from ..model.configuration import MODEL_TYPE
from ..run_record import RunRecord, read_json

# `dataset:` values that name a `datasets` builder for local files, not a Hub dataset
_LOCAL_BUILDERS = {"json", "csv", "parquet", "text", "arrow", "pandas", "sql", "xml", "webdataset", "generator"}
_MAX_LINEAGE = 8  # init_from chains followed back this far (a cycle of local directories stops too)


@dataclass
class SavedModel:
    """The files of a model directory, parsed."""

    path: Path
    config: dict[str, Any]  # config.json
    run: dict[str, Any] | None  # config.yaml
    record: RunRecord | None  # metrics.json

    @property
    def tasks(self) -> dict[str, dict[str, Any]]:
        """task_name -> head spec, in the run config's order (config.json sorts them by name)."""
        specs = self.config.get("tasks") or {}
        order = [t for t in self.section("tasks") if t in specs]
        return {t: specs[t] for t in [*order, *(t for t in specs if t not in order)]}

    @property
    def peft(self) -> dict[str, Any] | None:
        return self.config.get("peft") or None

    def section(self, name: str) -> dict[str, Any]:
        return dict((self.run or {}).get(name) or {})


def read_model_dir(model_dir: str | os.PathLike) -> SavedModel:
    """Parse ``config.json`` (required), ``config.yaml`` and ``metrics.json`` of an hfmtl model directory.

    Raises:
        HfmtlError: the directory is missing, is the root of a staged run, has no ``config.json``, or
            holds another kind of model.
    """
    path = Path(model_dir)
    if not path.is_dir():
        raise HfmtlError(f"model directory {str(path)!r} does not exist")
    record = RunRecord.read(path)  # the root of a staged run: an error naming its final model
    if not (path / "config.json").is_file():
        raise HfmtlError(
            f"{path} has no config.json, so it is not a saved hfmtl model (a training writes it when it ends)"
        )
    config = read_json(path / "config.json")
    if config.get("model_type") != MODEL_TYPE:
        raise HfmtlError(f"{path} holds a {config.get('model_type')!r} model, not an hfmtl multi-task model")
    run = None
    if (path / "config.yaml").is_file():
        try:
            run = yaml.safe_load((path / "config.yaml").read_text())
        except yaml.YAMLError as err:
            raise HfmtlError(f"{path / 'config.yaml'} is not valid YAML: {err}".replace("\n", " ")) from err
    return SavedModel(path=path, config=config, run=run, record=record)


# --- where the encoder and the data came from ---------------------------------------------------------


def search_roots(saved: SavedModel) -> list[Path]:
    """Directories that relative paths of the run config may be relative to: the current one, and the
    one the training ran in (the model directory minus ``train.output_dir``), so that a card written
    later from elsewhere still recognises ``../shared/models/x`` or ``outputs/glue`` as local paths."""
    roots = [Path.cwd()]
    output_dir = saved.section("train").get("output_dir")
    if output_dir and not Path(output_dir).is_absolute():
        here, parts = saved.path.resolve().parts, Path(output_dir).parts
        if len(parts) < len(here) and here[-len(parts) :] == parts:
            roots.append(Path(*here[: -len(parts)]))
    return roots


def hub_model_id(name: str | None, search_roots: list[Path] | tuple[Path, ...] = ()) -> str | None:
    """`name` if it is a Hub repo id rather than a local path, else None.

    A name that looks like a path (``./``, ``../``, ``/``, ``~``), or that exists under the current
    directory or one of `search_roots`, is local; the rest must pass huggingface_hub's repo id rules.

    Example:
        >>> hub_model_id("sentence-transformers/all-MiniLM-L6-v2"), hub_model_id("../shared/models/x")
        ('sentence-transformers/all-MiniLM-L6-v2', None)
    """
    if not name or name.startswith((".", "/", "~")) or "\\" in name:
        return None
    if any((Path(root) / name).exists() for root in (Path.cwd(), *search_roots)):
        return None
    try:
        validate_repo_id(name)
    except HFValidationError:
        return None
    return name


def local_hfmtl_dir(name: str | None, roots: list[Path]) -> Path | None:
    for root in roots:
        path = root / name if name else None
        if path is not None and (path / "config.json").is_file():
            try:
                if json.loads((path / "config.json").read_text()).get("model_type") == MODEL_TYPE:
                    return path
            except json.JSONDecodeError:
                return None
    return None


def weights_source(saved: SavedModel) -> str | None:
    """The name the encoder's weights were loaded from: PEFT's base, else init_from, else the encoder."""
    if saved.peft:
        return saved.peft.get("base_model")
    model = saved.section("model")
    return (
        model.get("init_from") or model.get("name_or_path") or (saved.config.get("encoder") or {}).get("_name_or_path")
    )


def init_from_lineage(saved: SavedModel) -> tuple[list[SavedModel], str | None]:
    """The earlier trainings this model continues (oldest first), followed through the local hfmtl
    directories in `model.init_from` / `peft.base_model` (a staged run's earlier stages), and the Hub id
    its weights come from at the origin, if they come from one."""
    chain: list[SavedModel] = []
    seen = {saved.path.resolve()}
    current = saved
    for _ in range(_MAX_LINEAGE):
        roots = search_roots(current)
        source = weights_source(current)
        earlier = local_hfmtl_dir(source, roots)
        if earlier is None:
            return chain, hub_model_id(source, roots)
        if earlier.resolve() in seen:
            break
        seen.add(earlier.resolve())
        current = read_model_dir(earlier)
        chain.insert(0, current)
    return chain, None


def dataset_id(task_run: dict[str, Any]) -> str | None:
    dataset = task_run.get("dataset")
    if not dataset or dataset in _LOCAL_BUILDERS or task_run.get("data_files"):
        return None  # local files (a builder name, or data_files given): no Hub id to cite
    try:
        validate_repo_id(dataset)
    except HFValidationError:
        return None
    return None if Path(dataset).exists() else dataset


# --- the card ----------------------------------------------------------------------------------------
