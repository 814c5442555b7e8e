"""Dynamic batching: requests that arrive together are scored in one ONNX Runtime call.

A worker task takes the oldest waiting request, then gathers more until the batch holds `max_batch` rows or
`wait_ms` have passed since that request arrived, concatenates their inputs, scores them in one call on a worker
thread (so the event loop keeps accepting), and hands each caller its own rows, in order. A request larger than
`max_batch` is scored alone. While one batch runs the next one gathers, so under load a batch is what arrived
during the previous call.

It waits only for requests that are on their way: given `in_flight` (the number of scoring requests the server
has the body of and has not answered), the batch is closed early once every one of them is in it or already waiting for its result, so
a lone request is scored at once instead of sitting out `wait_ms`.

With `max_batch` 1 or `wait_ms` 0 batching is off: each request is its own call, run on a pool of worker threads
(`workers`, default one per CPU), so calls overlap as in a server without batching.
"""
from __future__ import annotations

import asyncio
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

Feeds = dict[str, np.ndarray]


@dataclass
class _Pending:
    feeds: Feeds
    rows: int
    future: asyncio.Future
    arrived: float = field(default=0.0)


class Batcher:
    """`await batcher.score(feeds, rows)` -> that request's probabilities. `run(feeds)` is the model call;
    `on_call(rows, requests)` is told about every call made (for the metrics)."""

    def __init__(self, run: Callable[[Feeds], np.ndarray], max_batch: int, wait_ms: float,
                 workers: int | None = None, on_call: Callable[[int, int], None] | None = None,
                 in_flight: Callable[[], int] | None = None):
        self.run, self.max_batch, self.wait = run, max_batch, wait_ms / 1000.0
        self.batching = max_batch > 1 and wait_ms > 0
        self.on_call, self.in_flight = on_call, in_flight
        self.held = 0  # requests given to score() and not answered yet
        self._pool = ThreadPoolExecutor(1 if self.batching else (workers or os.cpu_count() or 1),
                                        thread_name_prefix="lightfmp-ort")
        self._queue: asyncio.Queue[_Pending] | None = None
        self._worker: asyncio.Task | None = None

    async def start(self) -> None:
        if self.batching:
            self._queue = asyncio.Queue()
            self._worker = asyncio.create_task(self._work(), name="lightfmp-batcher")

    async def stop(self) -> None:
        """Score every request given to `score` and not answered yet (queued, being gathered or in a call), then
        stop the worker and its threads."""
        if self._worker is not None:
            while self.held:
                await asyncio.sleep(0.01)
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
            self._worker = None
        self._pool.shutdown(wait=True)

    async def score(self, feeds: Feeds, rows: int) -> np.ndarray:
        loop = asyncio.get_running_loop()
        if not self.batching:
            probs = await loop.run_in_executor(self._pool, self.run, feeds)
            self._told(rows, 1)
            return probs
        pending = _Pending(feeds, rows, loop.create_future(), loop.time())
        self._queue.put_nowait(pending)
        self.held += 1
        try:
            return await pending.future
        finally:
            self.held -= 1

    def _more_coming(self) -> bool:
        """Whether scoring requests are on their way (being parsed, not yet here)."""
        return self.in_flight is None or self.in_flight() > self.held

    def _told(self, rows: int, requests: int) -> None:
        if self.on_call is not None:
            self.on_call(rows, requests)

    async def _work(self) -> None:
        carry: _Pending | None = None
        while True:
            first = carry if carry is not None else await self._queue.get()
            carry = None
            if first.future.done():  # the caller went away
                continue
            group, carry = await self._gather(first)
            await self._run_group(group)

    async def _gather(self, first: _Pending) -> tuple[list[_Pending], _Pending | None]:
        """`first` and the requests that follow it, up to max_batch rows or wait_ms after `first` arrived; the
        request that would overflow the batch is carried to the next one."""
        loop = asyncio.get_running_loop()
        group, rows = [first], first.rows
        deadline = first.arrived + self.wait
        while rows < self.max_batch:
            try:
                item = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                left = deadline - loop.time()
                if left <= 0 or not self._more_coming():
                    break
                try:
                    item = await asyncio.wait_for(self._queue.get(), left)
                except asyncio.TimeoutError:
                    break
            if item.future.done():
                continue
            if rows + item.rows > self.max_batch:
                return group, item
            group.append(item)
            rows += item.rows
        return group, None

    async def _run_group(self, group: list[_Pending]) -> None:
        loop = asyncio.get_running_loop()
        try:
            feeds = group[0].feeds if len(group) == 1 else \
                {k: np.concatenate([p.feeds[k] for p in group]) for k in group[0].feeds}
            probs = await loop.run_in_executor(self._pool, self.run, feeds)
        except Exception as e:
            if len(group) > 1:  # score them one by one, so only the request at fault fails
                for p in group:
                    await self._run_group([p])
            elif not group[0].future.done():
                group[0].future.set_exception(e)
            return
        self._told(int(len(probs)), len(group))
        for p, part in zip(group, np.split(probs, np.cumsum([p.rows for p in group])[:-1])):
            if not p.future.done():
                p.future.set_result(part)


__all__ = ["Batcher"]
