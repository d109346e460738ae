#!/usr/bin/env python
"""`hfmtl serve` under concurrent load: requests/s and p50/p99 latency, with and without dynamic batching.

Each arm starts its own server (`hfmtl serve MODEL --port 0`, in a fresh process, on this machine), lets
N concurrent clients (one httpx connection each) send one-input requests back to back, each client
waiting for its answer before sending the next, and stops the server with SIGTERM. The arms run one
after the other, never together. The inputs are real rows: the validation split of each task of the
model's own run config (``config.yaml``), taken round-robin across the tasks, so concurrent requests mix
tasks as real traffic would. The first `--warmup` requests of each arm are sent but not timed.

    python benchmarks/serving_load.py outputs/glue                          # batched vs unbatched, 32 clients
    python benchmarks/serving_load.py outputs/glue --clients 8 --requests 400 --max-wait-ms 2
    python benchmarks/serving_load.py outputs/glue --inputs requests.jsonl  # lines of {"task", fields...}

The clients run in this process, the server in another: both share the machine's cores, as a client
and a server on one host do. `measure` and `compare` are the reusable parts (benchmarks/inference.py can
call them); `ServerProcess` starts and stops a server.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import yaml

REPO = Path(__file__).resolve().parents[1]
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
_LISTENING = re.compile(r"hfmtl serve: .* on (http://\S+) ")


class ServerProcess:
    """``hfmtl serve MODEL --port 0 ARGS...`` in a child process; `url` once it answers ``/health``.

    Args:
        model: the saved model directory.
        args: more ``hfmtl serve`` options (``--no-batching``, ``--max-wait-ms 2``...).
        timeout: seconds to wait for the server to load its model and answer.
    """

    def __init__(self, model: str | Path, *args: str, timeout: float = 120.0):
        command = [sys.executable, "-m", "hfmtl.cli", "serve", str(model), "--port", "0", *args]
        self.process = subprocess.Popen(
            command,
            cwd=REPO,
            env={**os.environ, **OFFLINE_ENV},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._lines: list[str] = []
        self._url: str | None = None
        self._found = threading.Event()
        # the pipe is drained all along, or a chatty server would block on a full pipe
        self._reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._reader.start()
        self.url = self._wait_until_ready(timeout)

    def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self._lines.append(line)
            match = _LISTENING.search(line)
            if match and self._url is None:
                self._url = match.group(1)
                self._found.set()
        self._found.set()  # the process ended

    def _wait_until_ready(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        self._found.wait(timeout)
        if self._url is None:
            self.stop()
            raise RuntimeError(f"hfmtl serve did not start:\n{self.output()[-3000:]}")
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{self._url}/health", timeout=5).status_code == 200:
                    return self._url
            if self.process.poll() is not None:
                break
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"hfmtl serve did not answer /health:\n{self.output()[-3000:]}")

    def output(self) -> str:
        """What the server wrote to stderr so far."""
        return "".join(self._lines)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        """Send `sig` (a graceful stop) and return the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            status = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            status = self.process.wait()
        self._reader.join(10)  # the last lines of stderr
        return status

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def payloads_from_config(model: str | Path, per_task: int = 64) -> list[dict[str, Any]]:
    """``{"task", "inputs"}`` bodies from the first `per_task` rows of each task's validation file (as
    the model's ``config.yaml`` names it), interleaved: task 1, task 2, ..., task 1, ..."""
    config = yaml.safe_load((Path(model) / "config.yaml").read_text())
    by_task = []
    for name, task in config["tasks"].items():
        files = task.get("data_files") or {}
        path = files.get("validation") or files.get("train")
        if not path:
            continue
        path = Path(path) if Path(path).is_absolute() else REPO / path
        with open(path, encoding="utf-8") as f:
            rows = [json.loads(line) for _, line in zip(range(per_task), f)]
        by_task.append([{"task": name, "inputs": row} for row in rows])
    return [payload for group in zip(*by_task) for payload in group]


def payloads_from_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """``{"task", "inputs"}`` bodies from JSON Lines of ``{"task": NAME, field: value...}``."""
    payloads = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.strip():
            record = json.loads(line)
            payloads.append({"task": record.pop("task"), "inputs": record})
    return payloads


async def _load(url: str, payloads: list[dict[str, Any]], clients: int, requests: int, warmup: int) -> dict[str, Any]:
    latencies: list[float] = []
    errors = 0
    sent = 0
    started = ended = 0.0

    async def client() -> None:
        nonlocal sent, errors, started, ended
        async with httpx.AsyncClient(base_url=url, timeout=300) as http:
            while sent < warmup + requests:
                index = sent
                sent += 1
                if index == warmup:
                    started = time.perf_counter()  # the clock starts with the first timed request
                begin = time.perf_counter()
                response = await http.post("/predict", json=payloads[index % len(payloads)])
                if index >= warmup:
                    latencies.append(time.perf_counter() - begin)
                    errors += response.status_code != 200
                    ended = time.perf_counter()

    await asyncio.gather(*(client() for _ in range(clients)))
    seconds = ended - started
    ordered = sorted(latencies)
    return {
        "clients": clients,
        "requests": len(latencies),
        "errors": errors,
        "seconds": round(seconds, 3),
        "requests_per_s": round(len(latencies) / seconds, 2) if seconds > 0 else None,
        "p50_ms": round(1000 * statistics.median(ordered), 2),
        "p99_ms": round(1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], 2),
    }


def measure(
    url: str, payloads: list[dict[str, Any]], *, clients: int = 32, requests: int = 256, warmup: int = 32
) -> dict[str, Any]:
    """`clients` concurrent clients send `requests` timed requests (after `warmup` untimed ones) to a
    running server at `url`, cycling through `payloads`.

    Returns:
        ``{"clients", "requests", "errors" (non-200 answers), "seconds", "requests_per_s", "p50_ms",
        "p99_ms"}``.
    """
    if not payloads:
        raise ValueError("no payloads to send")
    return asyncio.run(_load(url, payloads, clients, requests, warmup))


def compare(
    model: str | Path,
    payloads: list[dict[str, Any]],
    *,
    clients: int = 32,
    requests: int = 256,
    warmup: int = 32,
    server_args: tuple[str, ...] = (),
) -> dict[str, Any]:
    """The same load against a batching server and an unbatched one (``--no-batching``), one after the
    other; ``speedup`` is batched requests/s over unbatched requests/s."""
    results: dict[str, Any] = {}
    for arm, extra in (("batched", ()), ("unbatched", ("--no-batching",))):
        with ServerProcess(model, "--no-access-log", "--log-level", "warning", *server_args, *extra) as server:
            results[arm] = measure(server.url, payloads, clients=clients, requests=requests, warmup=warmup)
            results[arm]["batching"] = httpx.get(f"{server.url}/health", timeout=10).json()["batching"]
    results["speedup"] = round(results["batched"]["requests_per_s"] / results["unbatched"]["requests_per_s"], 2)
    return results


def _table(results: dict[str, Any]) -> Iterator[str]:
    yield f"{'arm':<10} {'clients':>7} {'requests':>8} {'errors':>6} {'req/s':>9} {'p50 ms':>9} {'p99 ms':>9} {'batches':>8}"
    for arm in ("batched", "unbatched"):
        r = results[arm]
        yield (
            f"{arm:<10} {r['clients']:>7} {r['requests']:>8} {r['errors']:>6} {r['requests_per_s']:>9} "
            f"{r['p50_ms']:>9} {r['p99_ms']:>9} {r['batching']['batches']:>8}"
        )
    yield f"dynamic batching: {results['speedup']}x the requests/s of unbatched serving"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="Saved hfmtl model directory (with config.yaml).")
    parser.add_argument("--clients", type=int, default=32, help="Concurrent clients (default 32).")
    parser.add_argument("--requests", type=int, default=512, help="Timed requests per arm (default 512).")
    parser.add_argument("--warmup", type=int, default=64, help="Untimed requests first (default 64).")
    parser.add_argument("--inputs", help="JSON Lines of {task, fields...} (default: the tasks' validation rows).")
    parser.add_argument("--max-batch-size", type=int, default=32, help="The batched server's --max-batch-size.")
    parser.add_argument("--max-wait-ms", type=float, default=5.0, help="The batched server's --max-wait-ms.")
    parser.add_argument("--output", help="Write the measurements as JSON to this file.")
    args = parser.parse_args(argv)
    payloads = payloads_from_jsonl(args.inputs) if args.inputs else payloads_from_config(args.model)
    results = compare(
        args.model,
        payloads,
        clients=args.clients,
        requests=args.requests,
        warmup=args.warmup,
        server_args=("--max-batch-size", str(args.max_batch_size), "--max-wait-ms", str(args.max_wait_ms)),
    )
    print("\n".join(_table(results)))
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
