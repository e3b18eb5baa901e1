"""States: where a task run or flow run stands, and how it ended.

A state is a small immutable record: a ``type`` (what the orchestrator acts on),
a ``name`` (what a person reads: ``Cached`` is a kind of ``COMPLETED``,
``TimedOut`` a kind of ``FAILED``), a timestamp, a message and, once final, the
run's value or its exception. Every run ends in exactly one final state:
``Completed``/``Cached``, ``Failed``/``TimedOut``, ``Crashed`` (the
infrastructure failed under the run) or ``Cancelled``.

States are created on hot paths (several per task attempt), so they are slotted
and keep their timestamp as a float; ``timestamp`` converts on demand.

This module knows nothing of runs or of HTML. In a notebook a state shows
itself as a card (``_repr_html_``), drawn by the function the notebook code
(:mod:`daskflow.report.notebook`) registers with :func:`register_notebook_html`
when daskflow is imported; run records use the same hook. Without one the
notebook falls back to the plain ``repr``.
"""

from __future__ import annotations

import enum
import time
import traceback
import types
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from daskflow import secrets_mask
from daskflow.exceptions import CancelledRunError, CrashedRunError, DaskflowError, ResultError, UpstreamFailedError

__all__ = [
    "AwaitingConcurrencySlot",
    "AwaitingRetry",
    "Cached",
    "Cancelled",
    "Completed",
    "Cancelling",
    "Crashed",
    "Failed",
    "Late",
    "Paused",
    "Pending",
    "Retrying",
    "Running",
    "Scheduled",
    "State",
    "StateType",
    "Suspended",
    "TimedOut",
    "DeferredData",
    "FINAL_TYPES",
    "FINAL_TYPE_NAMES",
    "GivenVersion",
    "KnownValue",
    "LoadedOnce",
    "NOT_READY",
    "NotReady",
    "RemoteValue",
    "get_state_exception",
    "is_state_iterable",
    "item_state",
    "notebook_html",
    "raise_state_exception",
    "register_notebook_html",
]


class StateType(str, enum.Enum):
    """The kinds of state the engine acts on."""

    SCHEDULED = "SCHEDULED"
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CRASHED = "CRASHED"
    CANCELLED = "CANCELLED"
    PAUSED = "PAUSED"
    CANCELLING = "CANCELLING"

    def __repr__(self) -> str:
        return f"StateType.{self.value}"


# The one definition of "final": a run in one of these types has ended and never changes again.
FINAL_TYPES: frozenset[StateType] = frozenset(
    {StateType.COMPLETED, StateType.FAILED, StateType.CRASHED, StateType.CANCELLED}
)
# The same set as the type names the run store and the wire carry (plain strings, for SQL and events).
FINAL_TYPE_NAMES: frozenset[str] = frozenset(t.value for t in FINAL_TYPES)
_NO_VALUE: Any = object()
# Prefect's name for a run that never started because an input's run did not complete (see NotReady).
NOT_READY = "NotReady"


class DeferredData:
    """A run's value held by reference and named by its *data version*.

    A cached task's value carries the version of the cache entry that holds it
    (a fresh id per write, see :class:`daskflow.results.EntryInfo`), so what
    runs downstream can name its input by that version instead of hashing its
    content: the key of a run over a cached upstream is then known without
    loading the upstream's value at all, and a hit a few steps down a pipeline
    never reads what it would not use. ``load`` gives the value (once, then
    kept); ``item(i)`` is item ``i`` of a list value, versioned ``<version>/<i>``.
    A :class:`State` unwraps it in ``state.data``, so nothing else needs to know.
    """

    __slots__ = ()
    __daskflow_hash_name__ = "daskflow.DeferredData"  # a stored hit and a fresh result of one version hash alike

    @property
    def version(self) -> str:
        """The data version: the entry's, then ``/<i>`` per item taken."""
        raise NotImplementedError

    @property
    def length(self) -> int | None:
        """The length of a list or tuple value, when known without loading it."""
        return None

    def get(self) -> Any:
        """The value, loaded if need be."""
        raise NotImplementedError

    def in_memory(self) -> bool:
        """Whether ``get`` returns without reading storage."""
        return True

    def item(self, index: int) -> DeferredData:
        raise NotImplementedError

    def __daskflow_hash__(self) -> Any:
        # What a cache key sees of a versioned input: its version, never its content.
        return ("daskflow.data_version", self.version)


class LoadedOnce(DeferredData):
    """A reference read at most once: ``_load`` reads it, ``get`` keeps what it read."""

    __slots__ = ("_value", "_loaded")

    def __init__(self) -> None:
        self._value: Any = None
        self._loaded = False

    def _load(self) -> Any:
        raise NotImplementedError

    def in_memory(self) -> bool:
        return self._loaded

    def get(self) -> Any:
        if not self._loaded:
            self._value = self._load()
            self._loaded = True
        return self._value


class KnownValue(DeferredData):
    """A value in memory whose data version is known: a cached task's fresh result."""

    __slots__ = ("value", "_version")

    def __init__(self, value: Any, version: str) -> None:
        self.value = value
        self._version = version

    @property
    def version(self) -> str:
        return self._version

    @property
    def length(self) -> int | None:
        return len(self.value) if isinstance(self.value, (list, tuple)) else None

    def get(self) -> Any:
        return self.value

    def item(self, index: int) -> DeferredData:
        return KnownValue.of_item(self.value, index, self.version)

    @staticmethod
    def of_item(value: Any, index: int, version: str) -> KnownValue:
        """Item ``index`` of ``value``, versioned by its position (a negative index counts from the end)."""
        item = value[index]
        if index < 0:
            index += len(value)
        return KnownValue(item, f"{version}/{index}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (KnownValue, (self.value, self.version))

    def __repr__(self) -> str:
        return f"KnownValue({type(self.value).__name__}, version={self.version!r})"


class GivenVersion(DeferredData):
    """A reference told its data version and length when made: kept in ``_version`` and ``_length``,
    which each subclass declares in its slots."""

    __slots__ = ()
    _version: str
    _length: int | None

    @property
    def version(self) -> str:
        return self._version

    @property
    def length(self) -> int | None:
        return self._length


class RemoteValue(GivenVersion):
    """A value held elsewhere (on a Dask worker) of which only the data version and length are known here.

    What a Dask runner's client knows of a cached run that ended on the cluster:
    its worker reports the version with the end, not the value. Enough to key a
    run over it (a key sees a version, never the content) where the run is
    submitted, so that a hit never becomes a Dask task; the value itself is
    never read through this reference.
    """

    __slots__ = ("_version", "_length")

    def __init__(self, version: str, length: int | None = None) -> None:
        self._version = version
        self._length = length

    def in_memory(self) -> bool:
        return False

    def get(self) -> Any:
        raise ResultError(
            f"the value of data version {self._version!r} is held where its run executed; only its version is known here"
        )

    def item(self, index: int) -> DeferredData:
        length = self._length
        if length is not None:
            if not -length <= index < length:
                raise IndexError(f"item {index} of a list of {length}")
            index %= length
        elif index < 0:
            raise IndexError(f"item {index} of a list whose length is not known here")
        return RemoteValue(f"{self._version}/{index}")

    def __repr__(self) -> str:
        return f"RemoteValue(version={self._version!r}, length={self._length!r})"


class State:
    """One state of a run. Build them with the constructors: ``Completed(data=1)``."""

    __slots__ = ("type", "name", "message", "_data", "exception", "traceback", "_ts")

    def __init__(
        self,
        type: StateType,
        name: str | None = None,
        message: str | None = None,
        data: Any = _NO_VALUE,
        exception: BaseException | None = None,
        timestamp: float | None = None,
        traceback_text: str | None = None,
    ) -> None:
        self.type = type
        self.name = name or type.value.title()
        self.message = message
        self._data = None if data is _NO_VALUE else data
        self.exception = exception
        # The text survives pickling to other processes, where tracebacks do not.
        self.traceback = traceback_text
        self._ts = time.time() if timestamp is None else timestamp

    @property
    def data(self) -> Any:
        """The run's value (read from the cache's storage the first time, for a deferred hit)."""
        data = self._data
        if isinstance(data, DeferredData):
            return data.get()
        return data

    @data.setter
    def data(self, value: Any) -> None:
        self._data = value

    @property
    def data_version(self) -> str | None:
        """The version of the cache entry that holds this run's value, if it has one."""
        data = self._data
        return data.version if isinstance(data, DeferredData) else None

    @property
    def deferred(self) -> DeferredData | None:
        """The value's reference when it is versioned (kept in storage or in memory), else None."""
        data = self._data
        return data if isinstance(data, DeferredData) else None

    def _result_type(self) -> str:
        data = self._data
        if isinstance(data, DeferredData) and not data.in_memory():
            return "stored"  # naming its type would mean reading it
        return type(self.data).__name__

    @property
    def timestamp(self) -> datetime:
        """When the run entered this state (timezone-aware, UTC)."""
        return datetime.fromtimestamp(self._ts, tz=UTC)

    @property
    def epoch(self) -> float:
        """The timestamp as seconds since the epoch."""
        return self._ts

    def result(self, raise_on_failure: bool = True) -> Any:
        """The run's value; for a failed, crashed or cancelled run, raise its error.

        With ``raise_on_failure=False`` the error is returned instead of raised.
        """
        if self.type is StateType.COMPLETED:
            return self.data
        error = self._error()
        if raise_on_failure:
            raise error
        return error

    def _error(self) -> BaseException:
        if self.exception is not None:
            return self.exception
        if self.type is StateType.CRASHED:
            return CrashedRunError(self.message or "the run crashed")
        if self.type is StateType.CANCELLED:
            if self.name == NOT_READY:
                return UpstreamFailedError(self.message or "the run did not start: an input's run did not complete")
            return CancelledRunError(self.message or "the run was cancelled")
        if self.type is StateType.FAILED:
            return DaskflowError(self.message or "the run failed")
        return DaskflowError(f"the run is {self.name} and has no result yet; wait for it to finish first")

    def is_scheduled(self) -> bool:
        return self.type is StateType.SCHEDULED

    def is_pending(self) -> bool:
        # NotReady (see that constructor) is pending to code written for Prefect, though its run has ended.
        return self.type is StateType.PENDING or (self.type is StateType.CANCELLED and self.name == NOT_READY)

    def is_running(self) -> bool:
        return self.type is StateType.RUNNING

    def is_completed(self) -> bool:
        return self.type is StateType.COMPLETED

    def is_cached(self) -> bool:
        return self.type is StateType.COMPLETED and self.name == "Cached"

    def is_failed(self) -> bool:
        return self.type is StateType.FAILED

    def is_timed_out(self) -> bool:
        return self.type is StateType.FAILED and self.name == "TimedOut"

    def is_crashed(self) -> bool:
        return self.type is StateType.CRASHED

    def is_cancelled(self) -> bool:
        return self.type is StateType.CANCELLED and self.name != NOT_READY

    def is_final(self) -> bool:
        return self.type in FINAL_TYPES

    def is_paused(self) -> bool:
        return self.type is StateType.PAUSED

    def is_cancelling(self) -> bool:
        return self.type is StateType.CANCELLING

    def copy(self) -> State:
        """A new state of the same type, name, message, value and error, stamped now."""
        return State(self.type, self.name, self.message, self._data, self.exception, traceback_text=self.traceback)

    def __class_getitem__(cls, item: Any) -> Any:
        # State[int] in annotations, as Prefect's State is generic over its value's type.
        return types.GenericAlias(cls, item)

    def __repr__(self) -> str:
        parts = []
        if self.message:
            parts.append(f"message={self.message!r}")
        parts.append(f"type={self.type.value}")
        if self.type is StateType.COMPLETED:
            parts.append(f"result={self._result_type()}")
        return f"{self.name}({', '.join(parts)})"

    def _repr_html_(self) -> str | None:
        """The state's card in a notebook (see the module docstring)."""
        return notebook_html(self)

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            _rebuild,
            # Leaving this process, the exception loses any loaded secret (the object here is unchanged).
            (self.type, self.name, self.message, self._data, _travelling(self.exception), self._ts, self.traceback),
        )


def _travelling(exception: BaseException | None) -> BaseException | None:
    if exception is None or not secrets_mask.active():
        return exception
    return secrets_mask.mask_exception(exception)


def _rebuild(
    type: StateType,
    name: str,
    message: str | None,
    data: Any,
    exception: BaseException | None,
    ts: float,
    tb: str | None,
) -> State:
    return State(type, name, message, data, exception, ts, tb)


# Drawing in notebooks belongs to the notebook code (a layer above); it registers itself here.
_notebook_html: Callable[[Any], str | None] | None = None


def register_notebook_html(render: Callable[[Any], str | None]) -> None:
    """Make ``render(obj)`` draw states and run records in notebooks (their ``_repr_html_``)."""
    global _notebook_html
    _notebook_html = render


def notebook_html(obj: Any) -> str | None:
    """The HTML card of a state or run record, or None (the notebook shows its ``repr``) if none is registered."""
    render = _notebook_html
    return None if render is None else render(obj)


def _format_traceback(exc: BaseException) -> str:
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))


def Scheduled(message: str | None = None, name: str = "Scheduled") -> State:
    return State(StateType.SCHEDULED, name, message)


def AwaitingRetry(message: str | None = None) -> State:
    return State(StateType.SCHEDULED, "AwaitingRetry", message)


def Pending(message: str | None = None, name: str = "Pending") -> State:
    return State(StateType.PENDING, name, message)


def Running(message: str | None = None) -> State:
    return State(StateType.RUNNING, "Running", message)


def Retrying(message: str | None = None) -> State:
    return State(StateType.RUNNING, "Retrying", message)


def Completed(data: Any = None, message: str | None = None, name: str = "Completed") -> State:
    return State(StateType.COMPLETED, name, message, data)


def Cached(data: Any = None, message: str | None = None) -> State:
    return State(StateType.COMPLETED, "Cached", message, data)


def _failure(
    type: StateType, name: str, message: str | None, exception: BaseException | None, with_traceback: bool
) -> State:
    if message is None and exception is not None:
        message = f"{type_name(exception)}: {exception}" if str(exception) else type_name(exception)
    tb = _format_traceback(exception) if exception is not None and with_traceback else None
    if secrets_mask.active():  # a loaded secret never reaches a recorded message or traceback
        message = None if message is None else secrets_mask.mask_secrets(message)
        tb = None if tb is None else secrets_mask.mask_secrets(tb)
    return State(type, name, message, exception=exception, traceback_text=tb)


def Failed(
    message: str | None = None,
    exception: BaseException | None = None,
    name: str = "Failed",
    with_traceback: bool = True,
) -> State:
    return _failure(StateType.FAILED, name, message, exception, with_traceback)


def TimedOut(message: str | None = None, exception: BaseException | None = None, with_traceback: bool = True) -> State:
    return _failure(StateType.FAILED, "TimedOut", message, exception, with_traceback)


def Crashed(message: str | None = None, exception: BaseException | None = None, with_traceback: bool = True) -> State:
    return _failure(StateType.CRASHED, "Crashed", message, exception, with_traceback)


def Cancelled(message: str | None = None, exception: BaseException | None = None, with_traceback: bool = True) -> State:
    return _failure(StateType.CANCELLED, "Cancelled", message, exception, with_traceback)


def NotReady(message: str | None = None, exception: BaseException | None = None) -> State:
    """A run that never started because a run it takes an input from did not complete.

    Prefect leaves such a run ``Pending`` named ``NotReady`` for ever. daskflow
    promises that every run ends in a final state in the history, so this state
    is final: its type is ``CANCELLED`` (the run was called off before it began)
    and its message names the argument and how its run ended. To code written
    for Prefect it reads as Prefect's: ``is_pending()`` is True and
    ``is_cancelled()`` False; ``result()`` raises the
    :class:`~daskflow.exceptions.UpstreamFailedError`. The README's "Coming from
    Prefect" table says so.
    """
    return _failure(StateType.CANCELLED, NOT_READY, message, exception, with_traceback=False)


def Paused(
    message: str | None = None,
    timeout_seconds: float | None = None,
    pause_expiration_time: datetime | None = None,
    reschedule: bool = False,
    pause_key: str | None = None,
    name: str = "Paused",
) -> State:
    """A run waiting to be resumed (Prefect's constructor; its pause options are accepted, not acted on)."""
    return State(StateType.PAUSED, name, message)


def Suspended(
    message: str | None = None,
    timeout_seconds: float | None = None,
    pause_expiration_time: datetime | None = None,
    pause_key: str | None = None,
) -> State:
    return Paused(message, timeout_seconds, pause_expiration_time, True, pause_key, name="Suspended")


def Late(message: str | None = None, scheduled_time: datetime | None = None) -> State:
    """A scheduled run whose time has passed without it starting."""
    return State(StateType.SCHEDULED, "Late", message)


def AwaitingConcurrencySlot(message: str | None = None) -> State:
    return State(StateType.SCHEDULED, "AwaitingConcurrencySlot", message)


def Cancelling(message: str | None = None) -> State:
    return State(StateType.CANCELLING, "Cancelling", message)


def get_state_exception(state: State) -> BaseException:
    """The error of a failed, crashed or cancelled state (Prefect's helper); for others a DaskflowError saying so."""
    if state.is_completed():
        return DaskflowError(f"the state {state.name} completed: it has no exception")
    return state._error()


def raise_state_exception(state: State) -> None:
    """Raise the error of a failed, crashed or cancelled state; do nothing for any other state."""
    if state.is_failed() or state.is_crashed() or state.is_cancelled():
        raise state._error()


def is_state_iterable(value: Any) -> bool:
    """True for a non-empty list, tuple or set whose items are all states (Prefect's rule for a returned value)."""
    return isinstance(value, (list, tuple, set, frozenset)) and bool(value) and all(isinstance(v, State) for v in value)


def item_state(state: State, index: int) -> State:
    """Item ``index`` of a completed run's list value, as a state of its own.

    A versioned value gives a versioned item without being loaded (so a map over
    a cached list can find its runs' keys without reading the list). A run that
    did not complete passes its state on, as the whole list would.
    """
    if not state.is_completed():
        return state
    deferred = state.deferred
    try:
        item: Any = deferred.item(index) if deferred is not None else state.data[index]
    except Exception as exc:
        return State(StateType.FAILED, "UpstreamFailed", f"item {index} of an upstream value could not be taken: {exc}")
    return State(StateType.COMPLETED, data=item)


def type_name(exc: BaseException) -> str:
    """The exception's class name, qualified by module unless it is a builtin."""
    cls = type(exc)
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"
