"""The ``hfmtl serve`` command: every task of a saved model behind an HTTP JSON API.

    hfmtl serve MODEL [--host 127.0.0.1] [--port 8000] [--max-batch-size 32] [--max-wait-ms 5]
                [--no-batching] [--max-body-bytes N] [--device D] [--batch-size N] [--max-length N]

``POST /predict`` answers ``{"task": NAME | "tasks": [NAMES] | "all", "inputs": INPUT | [INPUTS]}``;
``GET /tasks`` lists the tasks with their fields and labels; ``GET /health``; OpenAPI docs at ``/docs``.
Concurrent requests are batched together across tasks and clients (hfmtl/serving/batching.py). SIGTERM
or Ctrl-C lets the requests in flight finish, then exits 0. docs/serving.md has the details.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys

from ..errors import HfmtlError
from .predict import load_predictor

_EXTRA = ("fastapi", "uvicorn")


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    """Register ``serve`` on the `hfmtl` command's subparsers."""
    serve = subparsers.add_parser(
        "serve",
        help="Serve a saved model's tasks over HTTP (JSON), with dynamic batching.",
        description='Serve every task of a saved model over HTTP. Needs: pip install "hfmtl[serve]".',
    )
    serve.add_argument("model", help="Saved hfmtl model directory or Hub id.")
    serve.add_argument("--host", default="127.0.0.1", help="Address to listen on (default 127.0.0.1: this machine).")
    serve.add_argument("--port", type=int, default=8000, help="Port to listen on (default 8000; 0: a free port).")
    serve.add_argument(
        "--max-batch-size", type=int, default=32, help="Inputs (times tasks) per model call at most (default 32)."
    )
    serve.add_argument(
        "--max-wait-ms",
        type=float,
        default=5.0,
        help="How long a request waits for others to share its model call (default 5 ms).",
    )
    serve.add_argument("--no-batching", action="store_true", help="Run every request alone (a baseline).")
    serve.add_argument(
        "--max-body-bytes", type=int, default=1_000_000, help="Larger request bodies get a 413 (default 1000000)."
    )
    serve.add_argument("--device", help="e.g. cpu, cuda, cuda:1 (default: CUDA if available, else CPU).")
    serve.add_argument("--batch-size", type=int, default=32, help="Features per forward pass (default 32).")
    serve.add_argument("--max-length", type=int, help="Tokens per input (default: as the model was trained).")
    serve.add_argument("--base-model", help="For a model saved as adapters: where its base encoder is now.")
    serve.add_argument(
        "--graceful-timeout",
        type=float,
        default=30.0,
        help="Seconds the requests in flight get to finish after SIGTERM or Ctrl-C (default 30).",
    )
    serve.add_argument(
        "--log-level",
        default="info",
        choices=["critical", "error", "warning", "info", "debug"],
        help="Server log level.",
    )
    serve.add_argument("--no-access-log", action="store_true", help="No log line per request.")
    serve.set_defaults(handler=_serve)


def _serve(args: argparse.Namespace) -> int:
    missing = [name for name in _EXTRA if importlib.util.find_spec(name) is None]
    if missing:
        raise HfmtlError(f'hfmtl serve needs {" and ".join(missing)}: pip install "hfmtl[serve]"')
    for option, value, least in (
        ("--max-batch-size", args.max_batch_size, 1),
        ("--max-wait-ms", args.max_wait_ms, 0),
        ("--max-body-bytes", args.max_body_bytes, 1),
        ("--graceful-timeout", args.graceful_timeout, 0),
    ):
        if value < least:
            raise HfmtlError(f"{option} {value} must be at least {least}")
    from ..serving import server
    from ..serving.app import create_app

    sock = server.bind(args.host, args.port)  # before the model loads: a taken port fails fast
    try:
        predictor = load_predictor(args)
        app = create_app(
            predictor,
            model_name=args.model,
            batching=not args.no_batching,
            max_batch_size=args.max_batch_size,
            max_wait_ms=args.max_wait_ms,
            max_body_bytes=args.max_body_bytes,
        )
    except BaseException:
        sock.close()
        raise
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    print(f"hfmtl serve: {args.model} on http://{shown}:{port} (docs: /docs)", file=sys.stderr, flush=True)
    return server.run(
        app,
        sock,
        log_level=args.log_level,
        access_log=not args.no_access_log,
        graceful_timeout=args.graceful_timeout,
    )
