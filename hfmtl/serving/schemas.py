"""The JSON bodies of the server's endpoints, as pydantic models: FastAPI checks requests against them
and writes the OpenAPI schema (``/openapi.json``, shown at ``/docs``) from them.

``inputs`` and the predictions are typed loosely here on purpose: what an input holds depends on the
task (`hfmtl.serving.planning` checks it against the task's own fields, with a message naming the
field), and so does the shape of a result (see `Predictor.predict`).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

_PAIR = {"sentence1": "A man is playing a guitar.", "sentence2": "A man plays music."}


class PredictOptions(BaseModel):
    """`Predictor.predict`'s options; each task type reads those that apply to it."""

    model_config = ConfigDict(extra="forbid")

    return_all_scores: bool = Field(False, description="Classification: every label with its probability.")
    top_k: int | None = Field(None, ge=1, description="Classification: the k most probable labels' scores.")
    threshold: float = Field(
        0.5, ge=0.0, le=1.0, description="Multi-label classification: labels above this probability are predicted."
    )


class PredictRequest(BaseModel):
    """A prediction request: one task (``task``) or several (``tasks``), and one input or a list."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"task": "rte", "inputs": _PAIR},
                {"tasks": ["rte", "stsb"], "inputs": [_PAIR]},
                {"tasks": "all", "inputs": _PAIR, "options": {"return_all_scores": True}},
            ]
        },
    )

    task: str | None = Field(None, description="One task name (see GET /tasks). Give `task` or `tasks`.")
    tasks: list[str] | str | None = Field(
        None,
        description='Several task names, or "all": each input is answered by every one of them, as {task: result}.',
    )
    inputs: Any = Field(
        ...,
        description=(
            "One input (a JSON object with the fields of the task, or the union of the fields of the tasks) "
            "or a list of them. One input gets one result; a list gets a list."
        ),
    )
    options: PredictOptions = Field(default_factory=PredictOptions)


class PredictResponse(BaseModel):
    """The predictions, in the shape of ``inputs``: one result, or a list (with ``tasks``: {task: result})."""

    predictions: Any = Field(
        ...,
        description=(
            "Classification: {label, score} ({labels: [...]} for multi-label); regression: {value}; "
            "token classification: a list of {entity_group, score, word, start, end}; multiple choice: "
            "{choice, probabilities}; question answering: {answer, score, start, end}."
        ),
    )


class TaskInfo(BaseModel):
    """One task of the served model."""

    type: str = Field(..., description="The task type, e.g. classification, regression, token_classification.")
    fields: list[str] = Field(..., description="The input fields it reads, required ones first.")
    inputs: str = Field(
        ..., description="The fields as one line, optional ones marked, e.g. 'text, text_pair (optional)'."
    )
    labels: list[str] | None = Field(None, description="Its labels, in the order of the head's outputs.")
    problem_type: str | None = Field(None, description="e.g. multi_label_classification.")


class BatchingStats(BaseModel):
    """The dynamic batcher's settings and counts since the server started."""

    enabled: bool
    max_batch_size: int
    max_wait_ms: float
    requests: int = Field(..., description="Requests that reached the model.")
    batches: int = Field(..., description="Model calls those requests were gathered into.")
    largest_batch: int = Field(..., description="Requests in the largest batch.")
    multi_task_batches: int = Field(..., description="Batches that mixed requests of different tasks.")


class Health(BaseModel):
    """The server is up and its model loaded."""

    status: Literal["ok"] = "ok"
    model: str
    device: str
    tasks: list[str]
    batching: BatchingStats


class ErrorResponse(BaseModel):
    """A request the server could not answer: one line naming the problem."""

    error: str = Field(
        ..., examples=["task 'rte', input 1: missing field 'sentence2' (task 'rte' reads sentence1, sentence2)"]
    )
