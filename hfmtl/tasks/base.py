"""The Task contract: everything one task type owns, in one place.

A task type (one file under ``hfmtl/tasks/``, or any importable module) subclasses `Task` and
`TaskConfig`. It owns:

- its config: the columns it reads and its options (a `TaskConfig` subclass);
- `setup`: checks the raw dataset has those columns and resolves the labels;
- `preprocess`: raw examples -> model features (tokenized once, cached by `datasets`);
- `collate`: a list of features -> a padded batch of tensors (dynamic padding);
- `build_head` / `compute_loss`: static, so the model rebuilds its heads from the saved head spec alone;
- `eval_outputs` / `compute_metrics`: what to gather from each eval batch, and the metrics over them;
- what generic code asks of the type, from the saved head spec alone (classmethods, so no data is
  needed): `predictor_class` (predictions from raw inputs), `pipeline_tag` / `describe_predictions` /
  `usage_snippet` (the model card), `standard_head` (export to a standard transformers model),
  `feature_unit` (transferability estimates), `check_mixed_batch` / `check_input_group` (sharing a pass).
  A type that cannot do one of these raises `Unsupported` with the reason; the defaults here do.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError, DataError
from ..typed import check_positive
from .capabilities import FeatureUnit, StandardHead, Unsupported, UsageSnippet
from .metrics import compute_metric, greater_is_better, metric_key
from .rows import check_texts

if TYPE_CHECKING:
    from .prediction import TaskPredictor


@dataclass
class TaskConfig:
    """Options shared by every task type. Subclasses add their columns and options."""

    type: str = field(metadata={"help": "Task type from the registry (see `hfmtl.tasks.TASK_TYPES`)."})
    dataset: str | None = field(
        default=None,
        metadata={"help": "Hub dataset id, or a builder (json, csv, parquet); inferred from data_files if null."},
    )
    subset: str | None = field(default=None, metadata={"help": "Dataset configuration, e.g. 'rte' for glue."})
    data_files: dict[str, str | list[str]] | None = field(
        default=None, metadata={"help": "Local files per split: {train: path, validation: path}."}
    )
    revision: str | None = field(
        default=None, metadata={"help": "Hub revision (branch, tag or commit) of the dataset."}
    )
    train_split: str = field(default="train", metadata={"help": "Split to train on."})
    eval_split: str | None = field(
        default="validation", metadata={"help": "Split to evaluate on; null: this task is not evaluated."}
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Train on the first N examples only."})
    streaming: bool = field(
        default=False,
        metadata={
            "help": "Read the train split as a stream (datasets' IterableDataset), tokenized on the fly, in "
            "stream order; the eval split is loaded in memory (see hfmtl/training/streaming.py)."
        },
    )
    num_train_examples: int | None = field(
        default=None,
        metadata={
            "help": "With streaming: the stream's number of training examples, which cannot be counted before "
            "training; needed by proportional and temperature sampling and by num_train_epochs."
        },
    )
    max_eval_samples: int | None = field(default=None, metadata={"help": "Evaluate on the first N examples only."})
    input_group: str | None = field(default=None, metadata={"help": "Share one encoder pass with this group's tasks."})
    batch_size: int | None = field(
        default=None,
        metadata={"help": "Per-device train batch size; defaults to train.per_device_train_batch_size."},
    )
    max_length: int | None = field(default=None, metadata={"help": "Defaults to model.max_length."})
    metrics: list[str] | None = field(
        default=None,
        metadata={"help": "Metric names (see hfmtl.tasks.metrics), or 'evaluate:<hub name or local path>'."},
    )
    main_metric: str | None = field(
        default=None, metadata={"help": "Metric key used for the aggregate and best checkpoint."}
    )
    greater_is_better: bool | None = field(
        default=None,
        metadata={
            "help": "Whether a higher main_metric is better. Unset: known for every built-in metric (mse and "
            "mae are lower-is-better); needed for an evaluate: metric whose direction hfmtl does not know."
        },
    )

    def __post_init__(self) -> None:
        for name in ("max_train_samples", "max_eval_samples", "batch_size", "max_length", "num_train_examples"):
            check_positive(name, getattr(self, name))  # task_config_from_dict adds "tasks.<task>."
        if self.dataset is None and not self.data_files:
            raise ConfigError("dataset is not set: give `dataset` (a Hub id) or `data_files` (local files per split)")
        if self.num_train_examples is not None and not self.streaming:
            raise ConfigError("num_train_examples applies to a streaming task (streaming: true); drop it")


class Task(abc.ABC):
    """One task of a run: its data handling, head, loss and metrics, and its type's answers to generic code.

    Args:
        name: the task name (the key under `tasks:`), used as the head's name in the model.
        config: this task's `TaskConfig` subclass instance.

    Example:
        >>> from hfmtl.tasks import get_task_class
        >>> spec = {"type": "regression", "num_labels": 1, "problem_type": "regression"}
        >>> regression = get_task_class(spec["type"])
        >>> regression.pipeline_tag, regression.describe_predictions(spec), regression.feature_unit().regression
        ('text-classification', 'a score', True)
        >>> regression.standard_head(spec).auto_class.__name__
        'AutoModelForSequenceClassification'
        >>> get_task_class("question_answering").feature_unit()
        Traceback (most recent call last):
        ...
        hfmtl.tasks.capabilities.Unsupported: question answering's targets are answer spans, not a label per example, token or choice
    """

    config_class: ClassVar[type[TaskConfig]] = TaskConfig
    #: The name a head spec saves as its ``type`` and `get_task_class` resolves: the registered name
    #: (``@register_task``), else ``module:Class``, so a type defined outside hfmtl reloads by import.
    type_name: ClassVar[str] = ""
    #: Encoder input tensors a collated batch may carry.
    model_input_names: ClassVar[tuple[str, ...]] = ("input_ids", "attention_mask", "token_type_ids")
    #: The Hub pipeline type of the head (huggingface.js pipelines.ts), for the model card's metadata.
    pipeline_tag: ClassVar[str] = "other"
    #: The side `pad_features` pads on; None: the tokenizer's own (decoder tokenizers often pad on the left).
    padding_side: ClassVar[str | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.type_name = f"{cls.__module__}:{cls.__qualname__}"  # `register_task` replaces it

    def __init__(self, name: str, config: TaskConfig):
        self.name = name
        self.config = config

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"

    # --- schema and labels ------------------------------------------------------------------

    @abc.abstractmethod
    def required_columns(self) -> list[str]:
        """Columns of the raw dataset this task reads."""

    def text_columns(self) -> dict[str, bool]:
        """The required columns that hold text: column -> whether it holds a list of texts (words,
        choices). `setup` checks that every row's value is a string (or a list of strings) there."""
        return {}

    def setup(self, splits: dict[str, Any]) -> None:
        """Check the raw splits (`datasets.Dataset` per split) and resolve labels from them.

        Raises:
            DataError: a split is empty or a column is missing.
            BadRowError: a row's text is null or not a string (hfmtl/tasks/rows.py).
        """
        for split_name, ds in splits.items():
            if len(ds) == 0:
                raise DataError(f"task {self.name!r}: split {split_name!r} is empty")
            missing = [c for c in self.required_columns() if c not in ds.column_names]
            if missing:
                raise DataError(
                    f"task {self.name!r}: column(s) {missing} not in split {split_name!r} "
                    f"(columns: {ds.column_names}); set the task's *_column options"
                )
        check_texts(self, splits, self.text_columns())

    @abc.abstractmethod
    def head_spec(self) -> dict[str, Any]:
        """A JSON-serialisable description of the head (saved in the model config)."""

    def adopt_head_spec(self, spec: dict[str, Any]) -> None:
        """Take the labels of a trained head, so that data is encoded as the model was trained.

        Raises:
            ConfigError: the head was trained for another task type.
        """
        if spec.get("type") != self.type_name:
            raise ConfigError(
                f"task {self.name!r} is {self.type_name!r} in the config but the model's head is {spec.get('type')!r}"
            )
        if "id2label" in spec and hasattr(self.config, "label_names"):
            self.config.label_names = [spec["id2label"][i] for i in range(len(spec["id2label"]))]

    # --- data ----------------------------------------------------------------------------------

    @abc.abstractmethod
    def preprocess(self, examples: dict[str, list], tokenizer, max_length: int) -> dict[str, list]:
        """Tokenize a batch of raw training examples (used with `Dataset.map(batched=True)`)."""

    def preprocess_eval(self, examples: dict[str, list], tokenizer, max_length: int) -> dict[str, list]:
        """Tokenize a batch of raw evaluation examples; the same as training unless a type differs (QA)."""
        return self.preprocess(examples, tokenizer, max_length)

    def pad_features(self, features: list[dict[str, Any]], tokenizer, with_labels: bool = True):
        """`tokenizer.pad` over the encoder inputs (and `labels` of a fixed width) of `features`; other
        columns (QA's offsets and example ids) are dropped."""
        keep = (*self.model_input_names, "labels") if with_labels else self.model_input_names
        rows = [{k: v for k, v in f.items() if k in keep} for f in features]
        return tokenizer.pad(rows, padding_side=self.padding_side, return_tensors="pt")

    @abc.abstractmethod
    def collate(self, features: list[dict[str, Any]], tokenizer) -> dict[str, torch.Tensor]:
        """Pad a list of features into a batch: the encoder inputs plus `labels`."""

    # --- model side: static, so a saved model rebuilds its heads from the spec alone -------------

    @staticmethod
    @abc.abstractmethod
    def build_head(spec: dict[str, Any], hidden_size: int, dropout: float, pooling: str) -> nn.Module:
        """The head module: `head(hidden_states, attention_mask) -> logits`."""

    @staticmethod
    @abc.abstractmethod
    def compute_loss(spec: dict[str, Any], logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The training loss of `logits` against `labels`."""

    # --- evaluation -------------------------------------------------------------------------------

    default_metrics: ClassVar[tuple[str, ...]] = ()

    @property
    def metric_names(self) -> list[str]:
        return list(self.config.metrics or self.default_metrics)

    @property
    def main_metric(self) -> str:
        """The key of the metric that stands for this task in the aggregate."""
        return self.config.main_metric or self.default_main_metric()

    def default_main_metric(self) -> str:
        return metric_key(self.metric_names[0])

    @property
    def greater_is_better(self) -> bool:
        """Whether a higher value of the main metric is better: the config's word, else the metric's.

        Raises:
            ConfigError: the main metric's direction is neither known nor declared.
        """
        if self.config.greater_is_better is not None:
            return self.config.greater_is_better
        known = greater_is_better(self.main_metric)
        if known is None:
            raise ConfigError(
                f"tasks.{self.name}.main_metric={self.main_metric!r}: hfmtl does not know whether higher or lower "
                f"is better; set tasks.{self.name}.greater_is_better: true (or false)"
            )
        return known

    def signed_main_metric(self, metrics: dict[str, float]) -> float:
        """The main metric, negated when lower is better: the task's share of ``eval/mean``."""
        value = metrics[self.main_metric]
        return value if self.greater_is_better else -value

    @abc.abstractmethod
    def eval_outputs(self, batch: dict[str, torch.Tensor], logits: torch.Tensor) -> dict[str, torch.Tensor]:
        """Tensors to gather across processes from one eval batch (e.g. predictions and labels)."""

    @abc.abstractmethod
    def compute_metrics(
        self, outputs: list[dict[str, np.ndarray]], eval_features: Any, eval_examples: Any
    ) -> dict[str, float]:
        """Metrics over all gathered eval batches (in dataset order)."""

    def _compute_named_metrics(self, predictions: Any, references: Any, **kwargs: Any) -> dict[str, float]:
        results: dict[str, float] = {}
        for metric_name in self.metric_names:
            results.update(compute_metric(metric_name, predictions, references, **kwargs))
        return results

    def check_main_metric(self, results: dict[str, float]) -> None:
        if self.main_metric not in results:
            raise ConfigError(
                f"tasks.{self.name}.main_metric={self.main_metric!r} is not among the computed metrics "
                f"{sorted(results)}"
            )

    # --- what generic code asks of the type: from the head spec alone ------------------------------

    @classmethod
    def predictor_class(cls) -> type[TaskPredictor]:
        """The `TaskPredictor` subclass that predicts this type from raw inputs (`hfmtl.Predictor`).

        Raises:
            Unsupported: the type has no predictor.
        """
        raise Unsupported("it has no predictor (its Task class does not override predictor_class)")

    @classmethod
    def describe_predictions(cls, spec: dict[str, Any]) -> str:
        """What the head predicts, in a few words for the model card's table (e.g. its label names)."""
        names = [str(v) for _, v in sorted((spec.get("id2label") or {}).items(), key=lambda kv: int(kv[0]))]
        if names:
            return ", ".join(names[:10]) + (f", ... ({len(names)} labels)" if len(names) > 10 else "")
        return f"{spec.get('num_labels')} outputs per input"

    @classmethod
    def usage_snippet(cls, task_name: str, spec: dict[str, Any], section: dict[str, Any]) -> UsageSnippet | None:
        """The model card's example of running this task with plain transformers, or None (no example).

        Args:
            task_name: the task's name in the model.
            spec: its head spec.
            section: the task's section of the run config (empty when the model has none).
        """
        return None

    @classmethod
    def standard_head(cls, spec: dict[str, Any]) -> StandardHead:
        """The standard transformers model this head is exported to (``hfmtl export``).

        Raises:
            Unsupported: there is none that computes exactly what the head does.
        """
        raise Unsupported("it has no standard transformers head to export to")

    @classmethod
    def feature_unit(cls) -> FeatureUnit:
        """What a row of this type's frozen features is, for the transferability estimates.

        Raises:
            Unsupported: its targets give no label per example, per token or per choice.
        """
        raise Unsupported("it has no label per example, per token or per choice")

    @classmethod
    def check_input_group(cls) -> None:
        """Whether this type's tasks may share an encoder pass in an input group (hfmtl/config/input_groups.py);
        if not, raises `Unsupported` with a reason that reads after the task's name ("is multiple choice (...)")."""
        return None

    @classmethod
    def check_mixed_batch(cls, spec: dict[str, Any]) -> None:
        """Whether rows of this task may share an encoder pass with other tasks' rows
        (`MultiTaskModel.forward_mixed`): any head that takes (batch, length) inputs row by row may.

        Raises:
            Unsupported: with a reason that reads after the task's name ("is multiple choice (...)").
        """
        return None
