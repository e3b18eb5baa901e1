"""Live updates: one poller per server reads what changed, and fans it out to every open event stream.

The run store has no way to notify anyone (SQLite has none at all), so the
server polls. Polling once per *client* would make the database's load grow
with the number of open browser tabs; instead one :class:`EventHub` per server
process polls every ``interval`` seconds, while at least one client listens,
and puts each change on every subscriber's queue. What it reads is a primary
key range of the two append-only tables, states and logs
(:func:`~daskflow.runstore.queries.changes_after`), so a poll costs the same
over ten runs or a hundred thousand.

A subscriber is one ``GET /api/events`` stream, optionally narrowed to one
flow run. Its queue is bounded: a client too slow to keep up is sent one
``reset`` event (reload what you show) instead of an unbounded backlog.

The hub counts its polls and the SQL statements they ran (``/api/health``
shows both), which is how a test checks that fifty clients cost one poll per
interval, not fifty.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from starlette.concurrency import run_in_threadpool

from daskflow.runstore.errors import RunStoreError
from daskflow.runstore.queries import changes_after, latest_ids
from daskflow.runstore.store import RunStore

__all__ = ["DEFAULT_INTERVAL", "EventHub", "Subscriber", "sse_stream"]

DEFAULT_INTERVAL = 0.5  # seconds between polls: the UI promises an update within 2 s
_QUEUE_SIZE = 5000  # events a subscriber may have waiting before it is told to reset
_KEEPALIVE_SECONDS = 15.0
_LOOK_BACK = 200  # ids each poll re-reads on a server database, for commits that land out of id order  # a comment line now and then keeps proxies from closing an idle stream
_log = logging.getLogger("daskflow.server")


@dataclass(eq=False)
class Subscriber:
    """One open event stream: its queue, and the flow run it follows (None: all of them)."""

    flow_run_id: str | None
    queue: asyncio.Queue[tuple[str, dict[str, Any]]] = field(default_factory=lambda: asyncio.Queue(_QUEUE_SIZE))
    overflowed: bool = False

    def offer(self, kind: str, event: dict[str, Any]) -> None:
        if self.flow_run_id is not None and event.get("flow_run_id") != self.flow_run_id:
            return
        if self.overflowed:
            return
        try:
            self.queue.put_nowait((kind, event))
        except asyncio.QueueFull:
            self.overflowed = True  # the stream sends one reset and the client reloads


class EventHub:
    """Polls the run store for changes while anyone listens; see the module docstring."""

    def __init__(self, store: RunStore, interval: float = DEFAULT_INTERVAL) -> None:
        self.store = store
        self.interval = interval
        self.subscribers: set[Subscriber] = set()
        self.polls = 0
        self.statements = 0  # SQL statements run by the polls (counted on the store's engine)
        self._state_id = 0
        self._log_id = 0
        self._fresh = True  # no listener since the last poll: skip the backlog, start from now
        self._starting = asyncio.Lock()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._polling = False
        # SQLite commits one writer at a time, so ids become visible in order. A server database
        # hands out ids before commit, so a lower id may appear after a higher one was read: there
        # each poll looks back over the last ids too, and skips those it has sent.
        self._lag = 0 if store.engine.dialect.name == "sqlite" else _LOOK_BACK
        self._seen_states: deque[int] = deque(maxlen=4 * _LOOK_BACK)
        self._seen_logs: deque[int] = deque(maxlen=4 * _LOOK_BACK)
        self._floors = (0, 0)
        sa.event.listen(store.engine, "before_cursor_execute", self._count_statement)

    def _count_statement(self, *args: Any) -> None:
        if self._polling:
            self.statements += 1

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="daskflow-server-events")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        sa.event.remove(self.store.engine, "before_cursor_execute", self._count_statement)

    async def subscribe(self, flow_run_id: str | None) -> Subscriber:
        """A new stream's subscriber: it gets everything written after this returns."""
        if self._fresh:
            # The first listener after a quiet spell fixes where the changes start *before* its
            # stream opens: a state written the moment after it connects must not be skipped.
            async with self._starting:
                if self._fresh:
                    self._state_id, self._log_id = await run_in_threadpool(latest_ids, self.store)
                    self._floors = (self._state_id, self._log_id)  # what was there before: never sent
                    self._fresh = False
        subscriber = Subscriber(flow_run_id)
        self.subscribers.add(subscriber)
        self._wake.set()
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        self.subscribers.discard(subscriber)

    def _poll_once(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        # On a worker thread: SQLAlchemy is synchronous. Only this thread touches the ids.
        self._polling = True
        try:
            lag = self._lag
            changes = changes_after(self.store, max(self._state_id - lag, 0), max(self._log_id - lag, 0))
            self._state_id = max(self._state_id, changes.last_state_id)
            self._log_id = max(self._log_id, changes.last_log_id)
            states = self._unseen(changes.states, self._seen_states, self._floors[0])
            return states, self._unseen(changes.logs, self._seen_logs, self._floors[1])
        finally:
            self._polling = False
            self.polls += 1

    def _unseen(self, rows: list[dict[str, Any]], seen: deque[int], floor: int) -> list[dict[str, Any]]:
        if not self._lag:
            return rows
        known = set(seen)
        fresh = [row for row in rows if row["id"] > floor and row["id"] not in known]
        seen.extend(row["id"] for row in fresh)  # bounded: the oldest ids fall out of the window
        return fresh

    async def _run(self) -> None:
        while True:
            if not self.subscribers:
                self._fresh = True
                self._wake.clear()
                await self._wake.wait()
                continue  # woken by a subscriber, which has fixed the starting point
            try:
                states, logs = await run_in_threadpool(self._poll_once)
            except RunStoreError as exc:  # a blip of the database: say so once per poll, keep serving
                _log.warning("event poll failed: %s", exc)
                states, logs = [], []
            for subscriber in list(self.subscribers):
                for event in states:
                    subscriber.offer("state", event)
                for event in logs:
                    subscriber.offer("log", event)
            await asyncio.sleep(self.interval)


def _frame(kind: str, event: dict[str, Any]) -> str:
    return f"event: {kind}\ndata: {json.dumps(event, separators=(',', ':'))}\n\n"


async def sse_stream(hub: EventHub, subscriber: Subscriber, disconnected: Any) -> AsyncIterator[str]:
    """The text of one ``text/event-stream``: a hello, then events as they come, until the client leaves."""
    try:
        yield "retry: 1000\n" + _frame("hello", {"interval": hub.interval})
        while True:
            if subscriber.overflowed:
                yield _frame("reset", {"reason": "too many events to keep up; reload"})
                return
            try:
                kind, event = await asyncio.wait_for(subscriber.queue.get(), _KEEPALIVE_SECONDS)
            except TimeoutError:
                if await disconnected():
                    return
                yield ": keepalive\n\n"
                continue
            yield _frame(kind, event)
    finally:
        hub.unsubscribe(subscriber)
