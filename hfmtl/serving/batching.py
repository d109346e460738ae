"""Dynamic batching: requests that arrive within a few milliseconds of each other share one model call.

A `DynamicBatcher` owns the model's only worker thread. Request handlers `submit` their (already
checked) entries and await the result; the batcher's loop gathers whatever arrived within
``max_wait_ms`` of the first waiting request, up to ``max_batch_size`` entries, and runs them in one
call, whatever their task and whichever client sent them. While a batch runs, new requests queue, so
under load each call takes the whole queue without waiting at all.

The model runs on one thread of its own: the event loop only parses, checks and answers, and is never
blocked by a forward pass, and the predictor is never used by two threads at once.

Example:
    >>> import asyncio
    >>> def run(entries, options):  # a stand-in for predictor.predict_many
    ...     return [entry["x"] * 2 for entry in entries]
    >>> async def main():
    ...     batcher = DynamicBatcher(run, max_batch_size=8, max_wait_ms=20)
    ...     await batcher.start()
    ...     results = await asyncio.gather(*(batcher.submit([{"x": i}]) for i in range(5)))
    ...     await batcher.stop()
    ...     return results, batcher.stats()["batches"]
    >>> asyncio.run(main())
    ([[0], [2], [4], [6], [8]], 1)
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable, Hashable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)

#: runs one batch: (entries, options) -> one result per entry, in order (`Predictor.predict_many`'s shape)
RunBatch = Callable[[list[dict[str, Any]], dict[str, Any]], Sequence[Any]]


@dataclass
class _Pending:
    """One request waiting for the model: its entries, its options, and the future its handler awaits."""

    entries: list[dict[str, Any]]
    options: tuple[tuple[str, Hashable], ...]
    future: asyncio.Future = field(repr=False)


class DynamicBatcher:
    """Gathers concurrent requests into batches and runs them, one batch at a time, on one worker thread.

    Args:
        run: runs one batch; called on the worker thread only. Requests with different options run in
            separate calls of the same batch.
        max_batch_size: entries per batch at most; a request with more entries runs alone, whole.
        max_wait_ms: how long the first request of a batch waits for others to join it.
        enabled: False: every request runs alone, in arrival order (no batching).
    """

    def __init__(self, run: RunBatch, *, max_batch_size: int = 32, max_wait_ms: float = 5.0, enabled: bool = True):
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size={max_batch_size} must be at least 1")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms={max_wait_ms} must be 0 or more")
        self.run = run
        self.max_batch_size = max_batch_size
        self.max_wait_ms = max_wait_ms
        self.enabled = enabled
        self._queue: collections.deque[_Pending] = collections.deque()
        self._arrived: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._running = False
        self._counts = {"requests": 0, "batches": 0, "largest_batch": 0, "multi_task_batches": 0}

    async def start(self) -> None:
        """Start the worker (inside the event loop that will call `submit`)."""
        self._arrived = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hfmtl-model")
        self._worker = asyncio.get_running_loop().create_task(self._work(), name="hfmtl-batcher")

    async def stop(self) -> None:
        """Finish what was submitted, then stop the worker and its thread."""
        while self._queue or self._running:  # in-flight handlers are still awaiting these
            await asyncio.sleep(0.005)
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
        if self._executor is not None:
            self._executor.shutdown(wait=True)
        self._worker = self._executor = None

    async def submit(self, entries: list[dict[str, Any]], options: Mapping[str, Hashable] | None = None) -> list[Any]:
        """Queue one request's entries; return their results, in order, once its batch has run.

        Raises:
            Exception: what `run` raised for this request (other requests of its batch are unaffected).
        """
        if self._worker is None or self._arrived is None:
            raise RuntimeError("DynamicBatcher.submit before start()")
        future = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(list(entries), tuple(sorted((options or {}).items())), future))
        self._arrived.set()
        return await future

    def stats(self) -> dict[str, Any]:
        """Settings and counts so far: ``requests``, ``batches`` (model calls of gathered requests),
        ``largest_batch`` (requests in the largest), ``multi_task_batches`` (batches mixing tasks)."""
        return {
            "enabled": self.enabled,
            "max_batch_size": self.max_batch_size,
            "max_wait_ms": self.max_wait_ms,
            **self._counts,
        }

    # --- the worker -------------------------------------------------------------------------------

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._gather(loop)
            self._running = True
            try:
                self._count(batch)
                outcomes = await loop.run_in_executor(self._executor, self._run_batch, batch)
                for pending, outcome in zip(batch, outcomes):
                    if pending.future.done():  # its client went away (the handler was cancelled)
                        continue
                    if isinstance(outcome, BaseException):
                        pending.future.set_exception(outcome)
                    else:
                        pending.future.set_result(outcome)
            finally:
                self._running = False

    async def _gather(self, loop: asyncio.AbstractEventLoop) -> list[_Pending]:
        """The next batch: the first waiting request, then those arriving before its deadline."""
        first = await self._next(loop, deadline=None)
        batch, size = [first], len(first.entries)
        if not self.enabled:
            return batch
        deadline = loop.time() + self.max_wait_ms / 1000
        while size < self.max_batch_size:
            pending = await self._next(loop, deadline)
            if pending is None:
                break
            if size + len(pending.entries) > self.max_batch_size:
                self._queue.appendleft(pending)  # it opens the next batch
                break
            batch.append(pending)
            size += len(pending.entries)
        return batch

    async def _next(self, loop: asyncio.AbstractEventLoop, deadline: float | None) -> _Pending | None:
        """The oldest waiting request; None once `deadline` passes with none.

        It waits on an event rather than on a queue's get() under a timeout: a get() cancelled by the
        timeout just as an item arrives can lose that item, an event cannot lose anything.
        """
        assert self._arrived is not None
        while not self._queue:
            self._arrived.clear()
            if deadline is None:
                await self._arrived.wait()
                continue
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except asyncio.TimeoutError:
                return None
        return self._queue.popleft()

    def _count(self, batch: list[_Pending]) -> None:
        counts = self._counts
        counts["requests"] += len(batch)
        counts["batches"] += 1
        counts["largest_batch"] = max(counts["largest_batch"], len(batch))
        if len({entry.get("task") for pending in batch for entry in pending.entries}) > 1:
            counts["multi_task_batches"] += 1

    def _run_batch(self, batch: list[_Pending]) -> list[Any]:
        """On the worker thread: each request's results, or the exception that is its alone."""
        outcomes: list[Any] = [None] * len(batch)
        groups: dict[tuple, list[int]] = {}
        for i, pending in enumerate(batch):
            groups.setdefault(pending.options, []).append(i)
        for options, members in groups.items():
            entries = [entry for i in members for entry in batch[i].entries]
            try:
                results = list(self.run(entries, dict(options)))
            except Exception as err:
                if len(members) == 1:
                    outcomes[members[0]] = err
                    continue
                # Requests are checked before they join a batch, so this is rare: find whose it is by
                # running each request of the group alone; the others still get their results.
                logger.warning("a batch of %d requests failed (%s); running them one by one", len(members), err)
                for i in members:
                    outcomes[i] = self._run_alone(batch[i], dict(options))
                continue
            start = 0
            for i in members:
                n = len(batch[i].entries)
                outcomes[i] = results[start : start + n]
                start += n
        return outcomes

    def _run_alone(self, pending: _Pending, options: dict[str, Any]) -> Any:
        try:
            return list(self.run(pending.entries, options))
        except Exception as err:
            return err
