"""The endpoints: ``POST /predict``, ``GET /tasks``, ``GET /health``.

Each reads what it needs from ``app.state`` (set by `hfmtl.serving.app.create_app`): the predictor, its
dynamic batcher, and the task catalog (computed once, at start-up).
"""

from __future__ import annotations

import contextlib
from typing import Any

from fastapi import APIRouter, Request

from ..inference.predictor import Predictor
from ..tasks import Unsupported
from .planning import plan_request
from .schemas import ErrorResponse, Health, PredictRequest, PredictResponse, TaskInfo

router = APIRouter()

_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "The body is not valid JSON."},
    413: {"model": ErrorResponse, "description": "The body is larger than the server's --max-body-bytes."},
    422: {"model": ErrorResponse, "description": "An unknown task, a missing field, a value of the wrong type."},
}


@router.post("/predict", response_model=PredictResponse, responses=_ERRORS)
async def predict(body: PredictRequest, request: Request) -> PredictResponse:
    """Predict one task (``task``) or several (``tasks``, or ``"all"``) for one input or a list of inputs.

    Concurrent requests are batched together (whatever their tasks) before they reach the model.
    """
    state = request.app.state
    plan = plan_request(state.predictor, body.model_dump(exclude={"options"}), body.options.model_dump())
    results = await state.batcher.submit(plan.entries, plan.options) if plan.entries else []
    return PredictResponse(predictions=plan.assemble(results))


@router.get("/tasks", response_model=dict[str, TaskInfo])
async def tasks(request: Request) -> dict[str, TaskInfo]:
    """Every task of the model: its type, the input fields it reads, and its labels."""
    return request.app.state.catalog


@router.get("/health", response_model=Health)
async def health(request: Request) -> Health:
    """The server is up: the model, its device and tasks, and the batcher's counts."""
    state = request.app.state
    predictor: Predictor = state.predictor
    return Health(
        model=state.model_name,
        device=str(predictor.device),
        tasks=list(predictor.tasks),
        batching=state.batcher.stats(),
    )


def task_catalog(predictor: Predictor) -> dict[str, TaskInfo]:
    """`TaskInfo` of every task; building it also prepares each task's predictor before requests come
    (the first request of a task would otherwise build it, on the event loop, while another thread
    may be predicting)."""
    catalog = {}
    for name, spec in predictor.model.config.tasks.items():
        id2label = spec.get("id2label")
        fields: list[str] = []
        described = ""
        with contextlib.suppress(Unsupported):  # a task type without a predictor: served with no fields
            fields = predictor.fields(name)
            described = predictor.describe_fields(name)
        catalog[name] = TaskInfo(
            type=spec["type"],
            fields=fields,
            inputs=described,
            labels=[id2label[i] for i in sorted(id2label)] if id2label else None,
            problem_type=spec.get("problem_type"),
        )
    return catalog
