"""The parts of benchmarks/inference.py: the model it measures, its inputs, its arms and their clock.

- `prepare_model`: a trained run of configs/glue.yaml, short (throughput does not depend on how long
  the heads trained), cached under the benchmark's output directory.
- `glue_inputs`: real validation rows, each input carrying the fields of every task.
- `predictor_arms` / `pipeline_arms`: callables that answer all the inputs one way, each with a counter
  of the encoder rows it ran.
- `time_arms`: warm-up, then rounds in alternating order; seconds per arm per round.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from runs import budget, read_config, train

from hfmtl.run_record import RunRecord

REPO = Path(__file__).resolve().parents[1]

#: the arms that answer several tasks in one Predictor call: name -> the tasks, or "all"
COMBINED = {"all": "all", "pairs3": ["mrpc", "rte", "stsb"], "singles2": ["sst2", "cola"]}


def prepare_model(
    cache: Path,
    *,
    config: str = "configs/glue.yaml",
    encoder: str | None = None,
    steps: int = 10,
    batch_size: int = 16,
    in_process: bool = False,
) -> Path:
    """A finished run of `config` trained for `steps` steps (no checkpoints, one small evaluation at the
    end), in ``cache/glue-<hash of its config>``; reused when a finished one is there already. Trained in
    a fresh process, or with `in_process` (--smoke) in this one.

    Only the first ``steps x batch_size`` training rows of each task are tokenized, to keep it short.
    """
    data = budget(read_config(config), steps, batch_size, eval_steps=steps)
    if encoder:
        data["model"]["name_or_path"] = str(encoder)
    for task in data["tasks"].values():
        task.update(max_train_samples=steps * batch_size, max_eval_samples=32)
    text = yaml.safe_dump(data, sort_keys=False)
    run_dir = cache / f"glue-{hashlib.sha256(text.encode()).hexdigest()[:10]}"
    record = RunRecord.read(run_dir) if run_dir.is_dir() else None
    if record is not None and record.finished:
        print(f"reusing the trained model in {run_dir}", flush=True)
        return run_dir
    cache.mkdir(parents=True, exist_ok=True)
    config_path = run_dir.with_suffix(".yaml")
    config_path.write_text(text)
    train(config_path, run_dir, ["train.overwrite_output_dir=true"], in_process=in_process)
    return run_dir


def _validation_rows(model_dir: Path, task: str, spec: dict[str, Any], limit: int) -> list[dict[str, Any]]:
    files = spec.get("data_files") or {}
    path = files.get("validation")
    if not path:
        raise SystemExit(f"task {task!r} of {model_dir}/config.yaml has no validation file to take inputs from")
    path = Path(path) if Path(path).is_absolute() else REPO / path
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for _, line in zip(range(limit), f)]


def glue_inputs(model_dir: Path, fields: dict[str, list[str]], n: int) -> list[dict[str, Any]]:
    """`n` inputs, each with the fields of every task (`fields`: task -> the fields it reads).

    Tasks that read the same fields (SST-2 and CoLA: ``sentence``; MRPC, RTE and STS-B: ``sentence1``,
    ``sentence2``) take turns giving their validation rows to those fields, in file order: input i has
    the sentence of SST-2's or CoLA's row and the pair of MRPC's, RTE's or STS-B's, as they come.
    """
    config = yaml.safe_load((model_dir / "config.yaml").read_text())
    groups: dict[tuple[str, ...], list[str]] = {}
    for task, names in fields.items():
        groups.setdefault(tuple(names), []).append(task)
    columns = []
    for names, tasks in groups.items():
        per_task = [_validation_rows(model_dir, t, config["tasks"][t], n // len(tasks) + 1) for t in tasks]
        turns = [row for rows in zip(*per_task) for row in rows]
        if len(turns) < n:
            raise SystemExit(f"--inputs {n}: the validation files of {', '.join(tasks)} have {len(turns)} rows in turn")
        columns.append([{name: row[name] for name in names} for row in turns[:n]])
    return [{k: v for column in columns for k, v in column[i].items()} for i in range(n)]


@dataclass
class EncoderCounter:
    """Counts what an encoder module ran while `on`: passes, rows, tokens (padded, and not)."""

    on: bool = False
    counts: dict[str, int] = field(default_factory=lambda: {"passes": 0, "rows": 0, "tokens": 0, "padded_tokens": 0})

    def attach(self, module) -> None:
        module.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs) -> None:
        if not self.on:
            return
        ids = kwargs.get("input_ids", args[0] if args else None)
        mask = kwargs.get("attention_mask")
        self.counts["passes"] += 1
        self.counts["rows"] += int(ids.shape[0])
        self.counts["padded_tokens"] += int(ids.numel())
        self.counts["tokens"] += int(mask.sum()) if mask is not None else int(ids.numel())


@dataclass
class Arm:
    """One way of answering all the inputs: `run(inputs)`, and what its encoder ran."""

    run: Callable[[list[dict[str, Any]]], Any]
    counter: EncoderCounter


def predictor_arms(predictor, tasks: Sequence[str], names: Sequence[str], batch_size: int) -> dict[str, Arm]:
    """``one:<task>`` (one task per call) for each of `tasks`, and the combined arms of `names`
    (`COMBINED`), all through `predictor`, `batch_size` inputs per chunk."""
    counter = EncoderCounter()
    counter.attach(predictor.model.encoder)

    def call(which):
        return lambda inputs: predictor.predict(which, inputs, batch_size=batch_size)

    arms = {f"one:{task}": Arm(call(task), counter) for task in tasks}
    arms.update({name: Arm(call(COMBINED[name]), counter) for name in names})
    return arms


def export_tasks(model_dir: Path, tasks: Sequence[str], out: Path) -> dict[str, Path]:
    """Each task of `tasks` exported as a standard transformers model (hfmtl's export path), under `out`."""
    from hfmtl.publish.export import export_model_dir

    return {task: export_model_dir(model_dir, task, out / task, overwrite=True) for task in tasks}


def pipeline_arms(
    exported: dict[str, Path], fields: dict[str, list[str]], batch_size: int, max_length: int
) -> dict[str, Arm]:
    """``pipeline:<task>``: `transformers.pipeline` on each exported task, on the CPU, `batch_size` inputs
    per forward, truncating at `max_length` tokens as the Predictor does (regression: raw scores)."""
    from transformers import pipeline

    arms = {}
    for task, path in exported.items():
        pipe = pipeline("text-classification", model=str(path), device="cpu")
        counter = EncoderCounter()
        counter.attach(pipe.model.base_model)
        regression = pipe.model.config.problem_type == "regression"
        text_fields = fields[task]

        def run(inputs, pipe=pipe, text_fields=text_fields, regression=regression):
            if len(text_fields) == 1:
                texts = [x[text_fields[0]] for x in inputs]
            else:
                texts = [{"text": x[text_fields[0]], "text_pair": x[text_fields[1]]} for x in inputs]
            options = {"function_to_apply": "none"} if regression else {}
            return pipe(texts, batch_size=batch_size, truncation=True, max_length=max_length, **options)

        arms[f"pipeline:{task}"] = Arm(run, counter)
    return arms


def time_arms(
    arms: dict[str, Arm], inputs: list[dict[str, Any]], *, repeats: int, warmup: int
) -> dict[str, dict[str, Any]]:
    """Each arm answers `inputs[:warmup]` once (untimed), then all of `inputs` once per round, for
    `repeats` rounds in alternating order (A B C, C B A, A B C...), so that a slow spell of the machine
    falls on every arm. The encoder counts are those of the first round.

    Returns:
        arm -> ``{"seconds": [per round], "encoder": {"passes", "rows", "tokens", "padded_tokens"}}``.
    """
    for arm in arms.values():
        arm.run(inputs[:warmup])
    results: dict[str, dict[str, Any]] = {name: {"seconds": []} for name in arms}
    names = list(arms)
    for round_ in range(repeats):
        for name in names if round_ % 2 == 0 else names[::-1]:
            arm = arms[name]
            if round_ == 0:
                arm.counter.counts = dict.fromkeys(arm.counter.counts, 0)
                arm.counter.on = True
            start = time.perf_counter()
            arm.run(inputs)
            results[name]["seconds"].append(time.perf_counter() - start)
            if round_ == 0:
                arm.counter.on = False
                results[name]["encoder"] = dict(arm.counter.counts)
    return results
