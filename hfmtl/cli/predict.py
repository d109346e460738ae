"""The ``hfmtl predict`` and ``hfmtl info`` commands.

    hfmtl predict MODEL --task NAME|NAME,NAME...|all [--input FILE|-] [--output FILE|-] [--batch-size N]
                  [--device D] [--base-model PATH_OR_ID]
    hfmtl info MODEL [--json]

`predict` reads JSON Lines (one JSON object per line, with the task's input fields as named in the
model's ``config.yaml``; blank lines are skipped) and writes one line per input: the input object with
one more key, ``prediction`` (``--output-field``), holding `Predictor.predict`'s result. With several
tasks (``--task rte,stsb``, or ``--task all``), each line carries the fields of all of them and its
``prediction`` is ``{task: result}``; tasks that tokenize a line alike encode it once
(hfmtl/inference/shared_pass.py). Without ``--task``, each line names its own task in a ``task``
field, or its tasks in ``tasks`` (a list, or "all"); lines of several tasks may mix. Every
line is checked before anything runs: a bad one is a one-line error naming its line number and the
missing field (exit status 2), and an output file is written to a temporary file and renamed only once
complete, so it is never half-written.

`info` describes a saved model without loading its weights: its tasks (type, labels, input fields),
its encoder, its PEFT adapters, and the evaluation of the saved weights from ``metrics.json``.

Example:
    >>> import contextlib, io, json  # doctest: +SKIP
    >>> out = io.StringIO()  # doctest: +SKIP
    >>> with contextlib.redirect_stdout(out):  # doctest: +SKIP
    ...     _ = _info(argparse.Namespace(model=model_dir, json=True))
    >>> json.loads(out.getvalue())["tasks"]["rte"]["labels"]  # doctest: +SKIP
    ['entailment', 'not_entailment']
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import HfmtlError
from ..files import write_text_atomic
from ..run_record import FILE_NAME as RUN_RECORD_FILE
from ..run_record import RunRecord

# torch, transformers and the model are imported by the commands that use them, not here: every
# `hfmtl` command line (`hfmtl --help` too) builds this module's parsers (tests/test_layout.py).
if TYPE_CHECKING:
    from ..inference.predictor import Predictor


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    """Register ``predict`` and ``info`` on the `hfmtl` command's subparsers."""
    predict = subparsers.add_parser(
        "predict",
        help="Predict one task, several or all of a saved model on JSON Lines.",
        description=(
            "Read JSON Lines with a task's input fields; write each line back with a 'prediction' key. "
            "With several tasks (--task rte,stsb or --task all), each line carries the fields of all of "
            "them and its prediction is {task: result}; the encoder runs once for the tasks that read the "
            "same fields alike."
        ),
    )
    predict.add_argument("model", help="Saved hfmtl model directory or Hub id.")
    predict.add_argument(
        "--task",
        help=(
            "Task name; several, comma-separated (--task rte,stsb); or every task (--task all). Without it, "
            "each line names its task in a 'task' field, or its tasks in 'tasks' (a list, or \"all\")."
        ),
    )
    predict.add_argument("--input", default="-", help="JSON Lines file to read; '-' (default): stdin.")
    predict.add_argument("--output", default="-", help="JSON Lines file to write; '-' (default): stdout.")
    predict.add_argument("--output-field", default="prediction", help="Key of the prediction in each output line.")
    predict.add_argument("--batch-size", type=int, default=32, help="Inputs per forward pass (default 32).")
    predict.add_argument("--device", help="e.g. cpu, cuda, cuda:1 (default: CUDA if available, else CPU).")
    predict.add_argument("--max-length", type=int, help="Tokens per input (default: as the model was trained).")
    predict.add_argument(
        "--base-model",
        help="For a model saved as adapters: where its base encoder is now, if it moved (default: where it was).",
    )
    predict.add_argument("--return-all-scores", action="store_true", help="Classification: every label's score.")
    predict.add_argument("--top-k", type=int, help="Classification: the k most probable labels' scores.")
    predict.add_argument(
        "--threshold", type=float, default=0.5, help="Multi-label: probability above which a label is predicted."
    )
    predict.set_defaults(handler=_predict)

    info = subparsers.add_parser("info", help="Describe a saved model: tasks, labels, encoder, PEFT, metrics.")
    info.add_argument("model", help="Saved hfmtl model directory or Hub id.")
    info.add_argument("--json", action="store_true", help="Print the description as JSON.")
    info.set_defaults(handler=_info)


# --- predict -------------------------------------------------------------------------------------


def _predict(args: argparse.Namespace) -> int:
    from ..tasks.prediction import InputError

    source = "<stdin>" if args.input == "-" else args.input
    records = _read_jsonl(args.input, source)
    if args.output != "-" and not Path(args.output).resolve().parent.is_dir():
        raise HfmtlError(f"--output {args.output!r}: directory {str(Path(args.output).parent)!r} does not exist")
    predictor = load_predictor(args)
    task_option = _task_option(args.task, predictor)
    requests = []
    for line_number, record in records:
        task_name = task_option if task_option is not None else record.get("task", record.get("tasks"))
        where = f"{source} line {line_number}"
        if task_name is None:
            raise HfmtlError(f"{where}: missing field 'task' (give --task NAME, or a 'task' field on every line)")
        if args.output_field in record:
            raise HfmtlError(
                f"{where}: the input already has a field {args.output_field!r}; choose another --output-field"
            )
        try:
            predictor.check(task_name, record)
        except (InputError, HfmtlError) as err:  # a missing field, a wrong type, an unknown task
            raise HfmtlError(f"{where}: {err}") from None
        requests.append({**{k: v for k, v in record.items() if k not in ("task", "tasks")}, "task": task_name})
    options = {"return_all_scores": args.return_all_scores, "top_k": args.top_k, "threshold": args.threshold}
    results = predictor.predict_many(requests, **options)
    lines = [
        json.dumps({**record, args.output_field: result}, ensure_ascii=False) + "\n"
        for (_, record), result in zip(records, results)
    ]
    if args.output == "-":
        sys.stdout.writelines(lines)
        sys.stdout.flush()
    else:
        write_text_atomic(args.output, "".join(lines))
        print(f"wrote {len(lines)} predictions to {args.output}", file=sys.stderr)
    return 0


def _task_option(task: str | None, predictor: Predictor) -> str | list[str] | None:
    """--task as `Predictor.predict` takes it: a task name, a list of names, or "all"; checked here, so
    that an unknown task is an error of its own, not of line 1."""
    if task is None:
        return None
    if "," in task and task not in predictor.tasks:
        task = [name.strip() for name in task.split(",") if name.strip()]
        if not task:
            raise HfmtlError("--task lists no task name")
    predictor.fields(task)
    return task


def load_predictor(args: argparse.Namespace) -> Predictor:
    """The Predictor of `hfmtl predict` and `hfmtl serve`: MODEL with their shared options (--device,
    --batch-size, --max-length, --base-model), loaded without a progress bar."""
    from ..inference.predictor import Predictor

    with _quiet_loading():
        return Predictor.from_pretrained(
            args.model,
            device=args.device,
            batch_size=args.batch_size,
            max_length=args.max_length,
            base_model=args.base_model,
        )


@contextlib.contextmanager
def _quiet_loading() -> Iterator[None]:
    """No "Loading weights" progress bar: stderr is for the one-line errors (and stdout may be data)."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def _read_jsonl(path: str, source: str) -> list[tuple[int, dict[str, Any]]]:
    """(line number, object) of every non-blank line."""
    if path == "-":
        text = sys.stdin.read()
    else:
        if not Path(path).is_file():
            raise HfmtlError(f"--input {path!r} does not exist")
        text = Path(path).read_text(encoding="utf-8")
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise HfmtlError(f"{source} line {number}: not valid JSON ({err.msg} at column {err.colno})") from None
        if not isinstance(record, dict):
            raise HfmtlError(f"{source} line {number}: expected a JSON object, got {type(record).__name__}")
        records.append((number, record))
    return records


# --- info ----------------------------------------------------------------------------------------


def model_info(model_name_or_path: str, **hub_kwargs: Any) -> dict[str, Any]:
    """A JSON-serialisable description of a saved hfmtl model, read from its config files only.

    Returns:
        ``{"model", "encoder": {"type", "name_or_path", "num_layers", "hidden_size"}, "pooling",
        "max_length", "peft": None or {"method", "mode", "adapters", "base_model"}, "tasks": {name:
        {"type", "num_labels", "labels", "problem_type", "inputs"}}, "metrics": None or {"step",
        "eval/mean", "tasks": {name: {metric: value}}}}``.
    """
    from transformers import AutoConfig

    from ..inference.saved_tasks import read_run_config, task_for
    from ..model.backbone import check_model_path
    from ..model.configuration import MultiTaskConfig
    from ..tasks import Unsupported, get_task_class

    path = check_model_path(str(model_name_or_path), "model")
    try:
        config = AutoConfig.from_pretrained(path, **hub_kwargs)
    except (OSError, ValueError) as err:
        raise HfmtlError(f"cannot load a model config from {path!r}: {err}".replace("\n", " ")) from err
    if not isinstance(config, MultiTaskConfig):
        raise HfmtlError(f"{path!r} is a {config.model_type!r} model, not an hfmtl multi-task model")
    run_config = read_run_config(path, **hub_kwargs)
    model_section = (run_config or {}).get("model") or {}
    encoder = config.encoder
    tasks = {}
    for name, spec in config.tasks.items():
        id2label = spec.get("id2label")
        inputs = None
        with contextlib.suppress(Unsupported):  # a task type without a predictor reads no inputs
            predictor_class = get_task_class(spec["type"]).predictor_class()
            task, strict = task_for(name, spec, run_config)
            inputs = predictor_class(task, spec, None, 0, strict).describe_fields()
        tasks[name] = {
            "type": spec["type"],
            "num_labels": spec.get("num_labels"),
            "labels": [id2label[i] for i in sorted(id2label)] if id2label else None,
            "problem_type": spec.get("problem_type"),
            "inputs": inputs,
        }
    return {
        "model": path,
        "encoder": {
            "type": encoder.model_type,
            "name_or_path": model_section.get("name_or_path") or getattr(encoder, "_name_or_path", None) or None,
            "num_layers": getattr(encoder, "num_hidden_layers", getattr(encoder, "n_layers", None)),
            "hidden_size": config.hidden_size,
        },
        "pooling": config.pooling,
        "max_length": model_section.get("max_length"),
        "peft": _peft_info(path, config.peft, hub_kwargs) if config.peft else None,
        "tasks": tasks,
        "metrics": _metrics(path, hub_kwargs),
    }


def _peft_info(path: str, peft: dict[str, Any], hub_kwargs: dict[str, Any]) -> dict[str, Any]:
    from ..model.adapters import ADAPTERS_DIR, SHARED_ADAPTER

    first = peft["adapters"][0]
    folder = ADAPTERS_DIR if first == SHARED_ADAPTER else f"{ADAPTERS_DIR}/{first}"
    adapter_config = _read_json(path, f"{folder}/adapter_config.json", hub_kwargs) or {}
    method = adapter_config.get("peft_type")
    if method and adapter_config.get("r"):
        method = f"{method} r={adapter_config['r']}"
    return {
        "method": method,
        "mode": peft["mode"],
        "adapters": list(peft["adapters"]),
        "base_model": peft["base_model"],
    }


def _metrics(path: str, hub_kwargs: dict[str, Any]) -> dict[str, Any] | None:
    """The evaluation of the saved weights: the best entry of the run record (else the last)."""
    from ..inference.saved_tasks import optional_file

    record = RunRecord.read_file(optional_file(path, RUN_RECORD_FILE, **hub_kwargs))
    entry = record.saved_evaluation(load_best_model_at_end=True) if record is not None else None
    if entry is None:
        return None
    per_task: dict[str, dict[str, float]] = {}
    for key, value in entry.items():
        parts = key.split("/")
        if len(parts) == 3 and parts[0] == "eval":
            per_task.setdefault(parts[1], {})[parts[2]] = value
    return {"step": entry.get("step"), "eval/mean": entry.get("eval/mean"), "tasks": per_task}


def _read_json(path: str, filename: str, hub_kwargs: dict[str, Any]) -> Any:
    from ..inference.saved_tasks import optional_file

    resolved = optional_file(path, filename, **hub_kwargs)
    if resolved is None:
        return None
    with open(resolved, encoding="utf-8") as f:
        return json.load(f)


def _info(args: argparse.Namespace) -> int:
    info = model_info(args.model)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(_format_info(info))
    return 0


def _format_info(info: dict[str, Any]) -> str:
    enc = info["encoder"]
    lines = [f"hfmtl model {info['model']}"]
    source = f" from {enc['name_or_path']}" if enc["name_or_path"] else ""
    lines.append(f"  encoder     {enc['type']}, {enc['num_layers']} layers, hidden size {enc['hidden_size']}{source}")
    lines.append(
        f"  pooling     {info['pooling']}" + (f", max_length {info['max_length']}" if info["max_length"] else "")
    )
    peft = info["peft"]
    if peft:
        mode = "one adapter per task" if peft["mode"] == "per_task" else "one shared adapter"
        lines.append(
            f"  peft        {peft['method'] or '?'}, {mode} ({', '.join(peft['adapters'])}); base {peft['base_model']}"
        )
    else:
        lines.append("  peft        none")
    width = max(map(len, info["tasks"]), default=0)
    lines.append(f"tasks ({len(info['tasks'])})")
    for name, task in info["tasks"].items():
        kind = task["type"] + (" (multi-label)" if task["problem_type"] == "multi_label_classification" else "")
        labels = f"{task['num_labels']} labels: {', '.join(task['labels'])}" if task["labels"] else ""
        lines.append(f"  {name:<{width}}  {kind:<22}  {labels}".rstrip())
        if task["inputs"]:
            lines.append(f"  {'':<{width}}  inputs: {task['inputs']}")
    metrics = info["metrics"]
    if metrics:
        mean = metrics["eval/mean"]
        lines.append(
            f"metrics of the saved weights (step {metrics['step']}"
            + (f", eval/mean {mean:.4f})" if mean is not None else ")")
        )
        for name, values in metrics["tasks"].items():
            shown = "  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in values.items())
            lines.append(f"  {name:<{width}}  {shown}")
    else:
        lines.append("metrics     none (no metrics.json)")
    return "\n".join(lines)
