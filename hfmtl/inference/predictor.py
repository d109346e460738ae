"""`Predictor`: load a saved (or Hub) multi-task model in one line and predict any of its tasks.

Example:
    >>> from hfmtl.inference import Predictor  # also exported as hfmtl.Predictor  # doctest: +SKIP
    >>> predictor = Predictor.from_pretrained(model_dir, batch_size=32)  # doctest: +SKIP
    >>> sorted(predictor.tasks)  # doctest: +SKIP
    ['copa', 'ner', 'rte', 'squad', 'stsb', 'topics']
    >>> predictor.predict("rte", {"sentence1": "A man plays a guitar.", "sentence2": "A man plays music."})  # doctest: +SKIP
    {'label': ..., 'score': ...}
    >>> predictor.predict("stsb", [("A cat sleeps.", "A cat is asleep."), ("Hi.", "Bye.")])  # doctest: +SKIP
    [{'value': ...}, {'value': ...}]
    >>> predictor.predict_many([{"task": "rte", "sentence1": "It rains.", "sentence2": "It is wet."},  # doctest: +SKIP
    ...                         {"task": "ner", "text": "Angela Merkel visited Paris."}])
    [{'label': ..., 'score': ...}, [...]]
    >>> predictor.predict(["rte", "stsb"], {"sentence1": "It rains.", "sentence2": "It is wet."})  # doctest: +SKIP
    {'rte': {'label': ..., 'score': ...}, 'stsb': {'value': ...}}
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from transformers import AutoConfig, AutoTokenizer

from ..errors import DataError, HfmtlError
from ..model import MultiTaskConfig, MultiTaskModel
from ..model.backbone import check_model_path
from ..model.pad_token import ensure_pad_token
from ..tasks.prediction import InputError, PredictOptions, TaskPredictor
from .saved_tasks import read_run_config, task_for, task_predictor_class
from .shared_pass import Job, SharedPass, requested_tasks


class Predictor:
    """Predictions of a `MultiTaskModel` for raw inputs, task by task or mixed.

    Args:
        model: the multi-task model; it is moved to `device` and put in eval mode.
        tokenizer: its (fast) tokenizer.
        run_config: the run's saved config (``config.yaml`` as a dict); its task sections give each
            task's input field names and options (``max_length``, QA's ``doc_stride``...). Without it,
            the fields have documented default names: ``text`` / ``text_pair`` (classification,
            regression), ``tokens`` or ``text`` (token classification), ``question`` / ``choices`` /
            ``context`` (multiple choice), ``question`` / ``context`` (QA).
        device: where the model runs; None: CUDA if available, else the CPU.
        batch_size: inputs encoded together, and features per forward pass (a QA input may have
            several windows; a multiple-choice input is one feature of all its choices).
        max_length: tokens per input; None: the task's ``max_length``, else the run's
            ``model.max_length``, else what the tokenizer and encoder allow.
    """

    def __init__(
        self,
        model: MultiTaskModel,
        tokenizer,
        run_config: Mapping[str, Any] | None = None,
        *,
        device: str | torch.device | None = None,
        batch_size: int = 32,
        max_length: int | None = None,
    ):
        if batch_size < 1:
            raise HfmtlError(f"batch_size={batch_size} must be at least 1")
        self.device = _device(device)
        self.model = model.to(self.device).eval()
        ensure_pad_token(tokenizer, getattr(tokenizer, "name_or_path", ""), key="tokenizer")  # inputs are batched
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.run_config = dict(run_config) if run_config else None
        self._limit = _length_limit(tokenizer, model.config)
        if max_length is not None and not 0 < max_length <= self._limit:
            raise HfmtlError(f"max_length={max_length} must be between 1 and {self._limit} (what this encoder takes)")
        self._max_length = max_length
        self._runners: dict[str, TaskPredictor] = {}

    @classmethod
    def from_pretrained(
        cls,
        model_name_or_path: str,
        *,
        device: str | torch.device | None = None,
        batch_size: int = 32,
        max_length: int | None = None,
        tokenizer=None,
        base_model: str | None = None,
        **hub_kwargs: Any,
    ) -> Predictor:
        """Load a model saved by hfmtl (a directory or a Hub repo), with its tokenizer and run config.

        Args:
            model_name_or_path: the model directory or Hub id (a PEFT model's base encoder is rebuilt
                from ``config.peft["base_model"]``).
            device, batch_size, max_length: see `Predictor`.
            tokenizer: a tokenizer to use instead of the one saved with the model.
            base_model: for a model saved as adapters, where its base encoder is now (Hub id or
                directory), when it is no longer where ``config.peft["base_model"]`` says.
            **hub_kwargs: ``revision``, ``token``, ``cache_dir``... for the Hub.

        Raises:
            HfmtlError: nothing loadable is there, or it is not an hfmtl model.
        """
        path = check_model_path(str(model_name_or_path), "model")
        _device(device)  # a bad device fails before the weights are loaded
        try:
            config = AutoConfig.from_pretrained(path, **hub_kwargs)
        except (OSError, ValueError) as err:
            raise HfmtlError(f"cannot load a model from {path!r}: {err}".replace("\n", " ")) from err
        if not isinstance(config, MultiTaskConfig):
            raise HfmtlError(
                f"{path!r} is a {config.model_type!r} model, not an hfmtl multi-task model; "
                "use transformers.pipeline for it"
            )
        model = MultiTaskModel.from_pretrained(path, config=config, base_model=base_model, **hub_kwargs)
        if tokenizer is None:
            try:
                tokenizer = AutoTokenizer.from_pretrained(path, **hub_kwargs)
            except (OSError, ValueError) as err:
                raise HfmtlError(
                    f"{path!r} has no loadable tokenizer ({err}); pass tokenizer=...".replace("\n", " ")
                ) from err
        return cls(
            model,
            tokenizer,
            read_run_config(path, **hub_kwargs),
            device=device,
            batch_size=batch_size,
            max_length=max_length,
        )

    def __repr__(self) -> str:
        return f"Predictor(tasks={list(self.tasks)}, device={str(self.device)!r}, batch_size={self.batch_size})"

    @property
    def tasks(self) -> dict[str, str]:
        """task_name -> task type, for every head of the model."""
        return {name: spec["type"] for name, spec in self.model.config.tasks.items()}

    def fields(self, task_name: str | Sequence[str]) -> list[str]:
        """The input field names task `task_name` reads (see `describe_fields` for which are optional);
        for a list of task names or ``"all"``, those any of them reads."""
        names = self._requested(task_name) or [task_name]
        return list(dict.fromkeys(field for name in names for field in self._runner(name).fields))

    def describe_fields(self, task_name: str) -> str:
        """The input fields of `task_name` as one readable line, e.g. ``'sentence1, sentence2'``."""
        return self._runner(task_name).describe_fields()

    def check(self, task_name: str | Sequence[str], item: Any) -> None:
        """Raise `InputError` (a ValueError) if `item` is not a valid input of `task_name` (each of them,
        for a list of task names or ``"all"``)."""
        for name in self._requested(task_name) or [task_name]:
            self._runner(name).parse(item)

    @torch.inference_mode()
    def predict(
        self,
        task_name: str | Sequence[str],
        inputs: Any,
        *,
        batch_size: int | None = None,
        return_all_scores: bool = False,
        top_k: int | None = None,
        threshold: float = 0.5,
    ) -> Any:
        """Predict one task, several tasks or all of them, for one input or a list of inputs.

        Several tasks share the encoder: an input is encoded once for all the tasks that tokenize it the
        same way (the same fields, the same ``max_length``), and the other tasks' rows ride in the same
        passes (hfmtl/inference/shared_pass.py says exactly which tasks share what).

        Args:
            task_name: one of `tasks`; or a list of them, or ``"all"`` (every task; a task that is
                itself named ``"all"`` keeps its name, and ``list(predictor.tasks)`` asks for all).
            inputs: one input, or a list (any iterable) of them. An input is a mapping with the task's
                fields (extra keys are ignored; for several tasks, the fields of all of them: each task
                reads its own), or a shorthand: a string (one text; a raw text for token
                classification), a ``(text, text_pair)`` or ``(question, context)`` tuple, or, in a
                list, a list of words for token classification.
            batch_size: overrides the predictor's batch size for this call.
            return_all_scores: classification: add ``scores``, all labels by decreasing probability.
            top_k: classification: add ``scores`` with the `top_k` most probable labels.
            threshold: multi-label classification: labels whose probability is above it are predicted.

        Returns:
            For one task, one result for one input and a list for a list: ``{"label", "score"}``
            (classification; ``{"labels": [{"label", "score"}, ...]}`` for multi-label), ``{"value"}``
            (regression), a list of ``{"entity_group", "score", "word", "start", "end"}`` (token
            classification), ``{"choice", "probabilities"}`` (multiple choice), ``{"answer", "score",
            "start", "end"}`` (QA). For several tasks, ``{task: result}`` for one input and a list of
            those for a list. Options that do not apply to a task's type are ignored.

        Raises:
            HfmtlError: an unknown task, or an input without a field a task needs (naming the task,
                the input and the field).

        Example:
            >>> predictor.predict("topics", "Stocks rallied after the match.", return_all_scores=True)  # doctest: +SKIP
            {'labels': [...], 'scores': [{'label': ..., 'score': ...}, ...]}
            >>> predictor.predict("copa", {"premise": "The glass fell.", "question": "effect",  # doctest: +SKIP
            ...                            "choices": ["It broke.", "It sang."]})
            {'choice': ..., 'probabilities': [..., ...]}
            >>> answer = predictor.predict("squad", ("Who wrote it?", "It was written by Ada Lovelace."))  # doctest: +SKIP
            >>> sorted(answer)  # doctest: +SKIP
            ['answer', 'end', 'score', 'start']
            >>> both = predictor.predict(["rte", "stsb"], {"sentence1": "It rains.", "sentence2": "It is wet."})  # doctest: +SKIP
            >>> sorted(both), sorted(both["stsb"])  # doctest: +SKIP
            (['rte', 'stsb'], ['value'])
            >>> predictor.predict("rte", {"sentence1": "No second sentence."})  # doctest: +SKIP
            Traceback (most recent call last):
            ...
            hfmtl.errors.DataError: task 'rte', input 0: missing field 'sentence2' (task 'rte' reads sentence1, sentence2)
        """
        single = isinstance(inputs, (str, tuple, Mapping))
        items = [inputs] if single else list(inputs)
        requested = self._requested(task_name)
        jobs = [self._job(name, item, i) for i, item in enumerate(items) for name in requested or [task_name]]
        results = self._run(jobs, batch_size, PredictOptions(return_all_scores, top_k, threshold))
        if requested is not None:
            width = len(requested)
            results = [dict(zip(requested, results[i : i + width])) for i in range(0, len(results), width)]
        return results[0] if single else results

    @torch.inference_mode()
    def predict_many(self, requests: Iterable[Mapping[str, Any]], **options: Any) -> list[Any]:
        """Predict requests for several tasks in one call; results come back in request order.

        Each request is a mapping with ``"task"`` (a task name) and that task's fields, or with
        ``"tasks"`` (a list of task names, or ``"all"``) and the fields of all of them; its result is
        what `predict` returns for that task or those tasks and those fields: a result, or
        ``{task: result}``. Requests of all tasks are encoded together: two requests (of the same task
        or of two tasks that tokenize it the same way) that carry the same input share its encoder
        rows, and the rest share the passes (hfmtl/inference/shared_pass.py).

        Args:
            requests: the requests.
            **options: `predict`'s keyword options, for every task.

        Raises:
            HfmtlError: a request that is not a mapping, has neither or both of ``task`` and
                ``tasks``, names an unknown task, or lacks a field (naming the request).

        Example:
            >>> results = predictor.predict_many([  # doctest: +SKIP
            ...     {"task": "ner", "tokens": ["Ada", "Lovelace", "lived", "in", "London", "."]},
            ...     {"task": "stsb", "sentence1": "A dog runs.", "sentence2": "A dog is running."},
            ...     {"tasks": ["rte", "stsb"], "sentence1": "A dog runs.", "sentence2": "A dog is running."},
            ... ])
            >>> type(results[0]).__name__, sorted(results[1]), sorted(results[2])  # doctest: +SKIP
            ('list', ['value'], ['rte', 'stsb'])
        """
        batch_size = options.pop("batch_size", None)
        requests = list(requests)
        jobs, shapes = [], []
        for i, request in enumerate(requests):
            if not isinstance(request, Mapping) or ("task" in request) == ("tasks" in request):
                problem = f"expected a mapping with a 'task' key (or 'tasks'), got {_short_repr(request)}"
                if isinstance(request, Mapping) and "task" in request:
                    problem = "has both 'task' and 'tasks'; give one"
                raise HfmtlError(f"request {i}: {problem}")
            key = "task" if "task" in request else "tasks"
            fields = {k: v for k, v in request.items() if k != key}
            requested = self._requested(request[key])
            shapes.append(requested)
            jobs.extend(self._job(name, fields, i) for name in requested or [request[key]])
        flat = iter(self._run(jobs, batch_size, PredictOptions(**options)))
        return [next(flat) if names is None else {name: next(flat) for name in names} for names in shapes]

    # --- internals --------------------------------------------------------------------------------

    def _requested(self, task_name: Any) -> list[str] | None:
        """None for one task name; the task names of a list, or of ``"all"``."""
        requested = requested_tasks(task_name, list(self.model.config.tasks))
        for name in requested or []:
            self._runner(name)  # an unknown task fails before any input is read
        return requested

    def _job(self, task_name: str, item: Any, index: int) -> Job:
        """Task `task_name` for input (or request) number `index`: its jobs share a chunk."""
        runner = self._runner(task_name)
        try:
            parsed = {**runner.parse(item), "index": index}  # the index names the input in errors
        except InputError as err:
            raise DataError(f"task {task_name!r}, input {index}: {err}") from None
        # Inputs of similar length share a chunk: less padding (on mixed lengths, several times less
        # work). Characters stand in for tokens here; within a chunk, rows are sorted by tokens.
        signature = repr(sorted((k, v) for k, v in parsed.items() if k != "index"))  # equal inputs sort together
        return Job(runner, parsed, index, size=_num_chars(parsed), signature=signature)

    def _run(self, jobs: list[Job], batch_size: int | None, options: PredictOptions) -> list[Any]:
        batch_size = batch_size or self.batch_size
        if batch_size < 1:
            raise HfmtlError(f"batch_size={batch_size} must be at least 1")
        return SharedPass(self.model, self.tokenizer, self.device, batch_size).run(jobs, options)

    def _runner(self, task_name: str) -> TaskPredictor:
        if task_name in self._runners:
            return self._runners[task_name]
        specs = self.model.config.tasks
        if task_name not in specs:
            close = difflib.get_close_matches(str(task_name), list(specs), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise HfmtlError(f"unknown task {task_name!r}{hint} (this model's tasks: {', '.join(specs)})")
        spec = specs[task_name]
        predictor_class = task_predictor_class(task_name, spec)
        task, strict = task_for(task_name, spec, self.run_config)
        max_length = self._max_length or task.config.max_length or self._run_max_length() or self._limit
        runner = predictor_class(task, spec, self.tokenizer, min(max_length, self._limit), strict)
        self._runners[task_name] = runner
        return runner

    def _run_max_length(self) -> int | None:
        return ((self.run_config or {}).get("model") or {}).get("max_length")


def _device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except RuntimeError as err:
        raise HfmtlError(f"device={str(device)!r} is not a device: {err}") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise HfmtlError(f"device={str(device)!r}, but CUDA is not available here; use device='cpu'")
    return device


def _length_limit(tokenizer, config: MultiTaskConfig) -> int:
    """The longest input the encoder takes: its position embeddings, or the tokenizer's limit if lower."""
    limits = [getattr(config.encoder, "max_position_embeddings", None), getattr(tokenizer, "model_max_length", None)]
    limits = [int(n) for n in limits if n is not None and 0 < n < 1_000_000]  # 1e30: "no limit" in transformers
    return min(limits) if limits else 512


def _num_chars(item: dict[str, Any]) -> int:
    return sum(len(v) if isinstance(v, str) else sum(map(len, v)) for v in item.values() if isinstance(v, (str, list)))


def _short_repr(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
