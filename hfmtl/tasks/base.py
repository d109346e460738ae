"""The Task contract: everything one task type owns, in one place.

A task type (one file under ``hfmtl/tasks/``) subclasses `Task` and `TaskConfig`, and is registered with
`@register_task("<type>")`. It owns:

- its config: the columns it reads and its options (a `TaskConfig` subclass);
- `setup`: checks the raw dataset has those columns and resolves the labels;
- `preprocess`: raw examples -> model features (tokenized once, cached by `datasets`);
- `collate`: a list of features -> a padded batch of tensors (dynamic padding);
- `build_head` / `compute_loss`: static, so the model rebuilds its heads from the saved head spec alone;
- `eval_outputs` / `compute_metrics`: what to gather from each eval batch, and the metrics over them.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError, DataError
from ..typed import check_positive
from .metrics import compute_metric, greater_is_better, metric_key


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
    max_eval_samples: int | None = field(default=None, metadata={"help": "Evaluate on the first N examples only."})
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
        for name in ("max_train_samples", "max_eval_samples", "batch_size", "max_length"):
            check_positive(name, getattr(self, name))  # task_config_from_dict adds "tasks.<task>."
        if self.dataset is None and not self.data_files:
            raise ConfigError("dataset is not set: give `dataset` (a Hub id) or `data_files` (local files per split)")


class Task(abc.ABC):
    """One task of a run: its data handling, head, loss and metrics.

    Args:
        name: the task name (the key under `tasks:`), used as the head's name in the model.
        config: this task's `TaskConfig` subclass instance.
    """

    config_class: ClassVar[type[TaskConfig]] = TaskConfig
    type_name: ClassVar[str] = ""
    #: Encoder input tensors a collated batch may carry.
    model_input_names: ClassVar[tuple[str, ...]] = ("input_ids", "attention_mask", "token_type_ids")

    def __init__(self, name: str, config: TaskConfig):
        self.name = name
        self.config = config

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"

    # --- schema and labels ------------------------------------------------------------------

    @abc.abstractmethod
    def required_columns(self) -> list[str]:
        """Columns of the raw dataset this task reads."""

    def setup(self, splits: dict[str, Any]) -> None:
        """Check the raw splits (`datasets.Dataset` per split) and resolve labels from them.

        Raises:
            DataError: a split is empty or a column is missing.
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
        return tokenizer.pad([{k: v for k, v in f.items() if k in keep} for f in features], return_tensors="pt")

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


def pool(hidden_states: torch.Tensor, attention_mask: torch.Tensor | None, mode: str) -> torch.Tensor:
    """One vector per sequence: the first token ('cls') or the mean over non-padding tokens ('mean')."""
    if mode == "cls":
        return hidden_states[:, 0]
    if attention_mask is None:
        return hidden_states.mean(dim=1)
    mask = attention_mask.unsqueeze(-1).to(hidden_states.dtype)
    return (hidden_states * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)


class PooledHead(nn.Module):
    """Sequence-level head: pool -> dropout -> dense -> tanh -> dropout -> linear.

    The same shape as RoBERTa's classification head and as BERT's pooler + classifier, so a task trained
    here can later be mapped onto a standard `...ForSequenceClassification` / `...ForMultipleChoice`.
    """

    def __init__(self, hidden_size: int, num_outputs: int, dropout: float, pooling: str):
        super().__init__()
        self.pooling = pooling
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.dropout = nn.Dropout(dropout)
        self.out_proj = nn.Linear(hidden_size, num_outputs)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        x = self.dropout(pool(hidden_states, attention_mask, self.pooling))
        x = torch.tanh(self.dense(x))
        return self.out_proj(self.dropout(x))


class TokenHead(nn.Module):
    """Per-token head: dropout -> linear, as in transformers' `...ForTokenClassification`."""

    def __init__(self, hidden_size: int, num_outputs: int, dropout: float):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.out_proj = nn.Linear(hidden_size, num_outputs)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        return self.out_proj(self.dropout(hidden_states))


def resolve_label_names(
    task: Task,
    splits: dict[str, Any],
    label_column: str,
    config_names: list[str] | None,
    num_labels: int | None,
    multi_label: bool = False,
) -> list[str]:
    """Label names from the config, else the dataset's ClassLabel feature, else the string labels seen.

    Integer labels with no names anywhere need `num_labels` (names become LABEL_0...): guessing the
    label count from the data would silently drop a class that happens to be absent from a slice.
    """
    if config_names:
        if len(set(config_names)) != len(config_names):
            raise ConfigError(f"tasks.{task.name}.label_names has duplicates: {config_names}")
        return [str(n) for n in config_names]
    first = next(iter(splits.values()))
    feature = first.features[label_column]
    inner = getattr(feature, "feature", None) if multi_label else feature
    if inner is not None and hasattr(inner, "names"):
        return list(inner.names)
    values: set = set()
    for ds in splits.values():
        for value in ds[label_column]:
            values.update(value if multi_label else [value])
    if values and all(isinstance(v, str) for v in values):
        return sorted(values)
    if num_labels:
        return [f"LABEL_{i}" for i in range(num_labels)]
    raise ConfigError(
        f"tasks.{task.name}: column {label_column!r} holds integer labels without names; "
        "set label_names: [...] (or num_labels)"
    )


def label_to_id(task: Task, value: Any, label2id: dict[str, int]) -> int:
    """Map one label (a name or an integer id) to its id, with a clear error outside the label set."""
    if isinstance(value, str):
        if value not in label2id:
            raise DataError(f"task {task.name!r}: label {value!r} is not in the label set {list(label2id)}")
        return label2id[value]
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool) and 0 <= value < len(label2id):
        return int(value)
    raise DataError(
        f"task {task.name!r}: label {value!r} is outside the label set (ids 0..{len(label2id) - 1}: {list(label2id)})"
    )
