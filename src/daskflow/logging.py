"""Run loggers: log records that know which flow run and task run wrote them.

``get_run_logger()`` returns an adapter over the ``daskflow.task_runs`` or
``daskflow.flow_runs`` logger that stamps every record with the run's ids and
names (``record.task_run_name`` and so on), so any handler — the console
format below, the run store, a worker forwarding records to the client — can
tell runs apart. ``log_prints`` is implemented by wrapping ``builtins.print``
once; the wrapper asks the current run context whether prints should become
INFO records, so code outside runs prints as usual.
"""

from __future__ import annotations

import builtins
import io
import logging
import sys
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from typing import Any

from daskflow import secrets_mask, settings
from daskflow.context import get_flow_run_context, get_run_context, get_task_run_context

__all__ = [
    "ARTIFACT_LOGGER",
    "RunLoggerAdapter",
    "configure_console_logging",
    "disable_run_logger",
    "get_logger",
    "get_run_logger",
    "install_print_capture",
    "run_logger_for",
    "set_console_enabled",
]

FLOW_LOGGER = "daskflow.flow_runs"
TASK_LOGGER = "daskflow.task_runs"
# Artifacts travel as records on this logger (see daskflow.artifacts); it does not propagate,
# so they reach only the handlers that keep artifacts, never the console or the run logs.
ARTIFACT_LOGGER = "daskflow.artifacts"
_CONSOLE_FORMAT = "%(asctime)s.%(msecs)03d | %(levelname)-7s | %(run_label)s - %(message)s"


class RunLoggerAdapter(logging.LoggerAdapter[logging.Logger]):
    """A logger adapter that adds the run's ids and names to every record."""

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        extra = dict(self.extra or {})
        extra.update(kwargs.get("extra") or {})
        kwargs["extra"] = extra
        return msg, kwargs


def run_logger_for(
    *,
    flow_run_id: str | None,
    flow_run_name: str | None,
    flow_name: str | None,
    task_run_id: str | None = None,
    task_run_name: str | None = None,
    task_name: str | None = None,
) -> RunLoggerAdapter:
    """A run logger for the given run; the engine uses it for its own messages."""
    if task_run_id is not None:
        logger = logging.getLogger(TASK_LOGGER)
        label = f"Task run {task_run_name!r}"
    else:
        logger = logging.getLogger(FLOW_LOGGER)
        label = f"Flow run {flow_run_name!r}"
    extra = {
        "flow_run_id": flow_run_id,
        "flow_run_name": flow_run_name,
        "flow_name": flow_name,
        "task_run_id": task_run_id,
        "task_run_name": task_run_name,
        "task_name": task_name,
        "run_label": label,
    }
    return RunLoggerAdapter(logger, extra)


def get_run_logger() -> RunLoggerAdapter:
    """The logger of the flow run or task run this code runs in.

    Raises ``MissingContextError`` outside a run; use ``logging.getLogger`` there.
    Inside ``disable_run_logger()`` it gives a disabled logger instead, so a
    task's ``.fn`` can be called plainly in a unit test, as with Prefect.
    """
    if get_task_run_context() is None and get_flow_run_context() is None and _run_loggers_disabled():
        return RunLoggerAdapter(_null_logger(), {})
    ctx = get_run_context()
    task_ctx = get_task_run_context()
    if task_ctx is not None:
        run = task_ctx.task_run
        return run_logger_for(
            flow_run_id=task_ctx.flow_run_id,
            flow_run_name=task_ctx.flow_run_name,
            flow_name=task_ctx.flow_name,
            task_run_id=run.id,
            task_run_name=run.name,
            task_name=run.task_name,
        )
    flow_ctx = get_flow_run_context()
    assert flow_ctx is not None and ctx is flow_ctx
    return run_logger_for(
        flow_run_id=flow_ctx.flow_run.id,
        flow_run_name=flow_ctx.flow_run.name,
        flow_name=flow_ctx.flow_run.flow_name,
    )


def get_logger(name: str | None = None) -> logging.Logger:
    """The ``daskflow`` logger, or its child ``daskflow.<name>``: for code outside runs (Prefect's ``get_logger``)."""
    return logging.getLogger("daskflow" if not name else f"daskflow.{name}")


def _run_loggers_disabled() -> bool:
    return logging.getLogger(FLOW_LOGGER).disabled and logging.getLogger(TASK_LOGGER).disabled


def _null_logger() -> logging.Logger:
    logger = logging.getLogger("daskflow.null")
    logger.disabled = True
    return logger


@contextmanager
def disable_run_logger() -> Iterator[None]:
    """Silence the run loggers in the block; outside runs ``get_run_logger()`` then gives a disabled logger.

    For unit tests of a task's function (``my_task.fn(...)``) that calls
    ``get_run_logger()``; the loggers are restored as they were on leaving.
    """
    loggers = [logging.getLogger(FLOW_LOGGER), logging.getLogger(TASK_LOGGER)]
    before = [logger.disabled for logger in loggers]
    for logger in loggers:
        logger.disabled = True
    try:
        yield
    finally:
        for logger, was in zip(loggers, before, strict=True):
            logger.disabled = was


class _ConsoleFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        if not hasattr(record, "run_label"):
            record.run_label = record.name
        return super().format(record)


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at emit time (pytest, notebooks and redirects replace it)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _: Any) -> None:
        pass


_console_handler = _StderrHandler()
_console_handler.setFormatter(_ConsoleFormatter(_CONSOLE_FORMAT, datefmt="%H:%M:%S"))
_console_handler.addFilter(secrets_mask.FILTER)  # loaded secrets print as *** (see daskflow.secrets_mask)
_console_off_here = False


def configure_console_logging() -> None:
    """Apply dask.config ``daskflow.logging.console``; the flow engine calls it at each run start."""
    enabled = bool(settings.get("logging.console")) and not _console_off_here
    _console_handler.setLevel(logging.NOTSET if enabled else logging.CRITICAL + 1)


def set_console_enabled(enabled: bool) -> None:
    """Turn the console off in this process whatever the config says (Dask workers do:
    their run records are printed by the client instead)."""
    global _console_off_here
    _console_off_here = not enabled
    configure_console_logging()


def _install_console() -> None:
    # At import, so that the "daskflow" logger has a definite level before any run
    # (and before any test harness saves and restores it).
    root = logging.getLogger("daskflow")
    level = settings.get("logging.level")
    root.setLevel(level if isinstance(level, int) else str(level).upper())
    root.addHandler(_console_handler)
    logging.getLogger(ARTIFACT_LOGGER).propagate = False
    configure_console_logging()


_install_console()


_original_print = builtins.print
_print_installed = False


def _should_capture() -> RunLoggerAdapter | None:
    task_ctx = get_task_run_context()
    if task_ctx is not None:
        return get_run_logger() if task_ctx.log_prints else None
    flow_ctx = get_flow_run_context()
    if flow_ctx is not None and flow_ctx.log_prints:
        return get_run_logger()
    return None


def _print(*values: Any, sep: str | None = " ", end: str | None = "\n", file: Any = None, flush: bool = False) -> None:
    if file is None or file is sys.stdout:
        logger = _should_capture()
        if logger is not None:
            buffer = io.StringIO()
            _original_print(*values, sep=sep, end="", file=buffer)
            logger.info(buffer.getvalue())
            return
    _original_print(*values, sep=sep, end=end, file=file, flush=flush)


def install_print_capture() -> None:
    """Wrap ``builtins.print`` so that ``log_prints`` runs log what they print."""
    global _print_installed
    if not _print_installed:
        builtins.print = _print
        _print_installed = True
