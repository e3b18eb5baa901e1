"""The values of the secrets loaded in this process, and the pure functions that mask them with ``***``.

:mod:`daskflow.blocks.redaction` registers a secret's text here when a block is
loaded (on a Dask worker too: a block travels by name and is loaded where it is
used). What daskflow records or prints is passed through :func:`mask_secrets`:
failed states' messages and tracebacks (:mod:`daskflow.states`), log records
(:data:`FILTER`, a handler-level filter on the console, the run history
recorder and the Dask worker forwarder, so it sees the records of child
loggers as well), and the exception of a state pickled to another process
(:func:`mask_exception`). Everything is a no-op when no secret was ever loaded
here: one empty-set check.

The module sits in the lowest layer and imports nothing from daskflow.
"""

from __future__ import annotations

import copy
import logging
import threading
from collections.abc import Iterable
from typing import Any

__all__ = [
    "FILTER",
    "MASK",
    "MaskedError",
    "SecretMaskingFilter",
    "active",
    "add_secrets",
    "mask_exception",
    "mask_secrets",
]

MASK = "***"

_values: set[str] = set()
_ordered: tuple[str, ...] = ()  # longest first: a secret may contain another
_lock = threading.Lock()


def add_secrets(values: Iterable[str]) -> None:
    """Mask these strings from now on, in this process."""
    global _ordered
    new = {v for v in values if v}
    if not new or new <= _values:
        return
    with _lock:
        _values.update(new)
        _ordered = tuple(sorted(_values, key=len, reverse=True))


def active() -> bool:
    """True once a secret was registered in this process."""
    return bool(_values)


def mask_secrets(text: str) -> str:
    """``text`` with every registered secret replaced by ``***``."""
    if not _values:
        return text
    for secret in _ordered:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def _mask_any(value: Any) -> Any:
    if isinstance(value, str):
        return mask_secrets(value)
    if isinstance(value, list):
        return [_mask_any(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_mask_any(v) for v in value)
    return value


class MaskedError(Exception):
    """Stands in for an exception that holds a secret and could not be copied without it."""


def mask_exception(exc: BaseException) -> BaseException:
    """``exc`` itself if its text holds no secret; else a copy of it whose args and string attributes are masked.

    The copy has no traceback, cause or context (they do not pickle anyway). If the
    copy cannot be made, or still shows a secret, a :class:`MaskedError` with the
    masked text takes its place. The original exception is never changed.
    """
    if not _values:
        return exc
    try:
        text = str(exc)
    except Exception:
        text = ""
    state = getattr(exc, "__dict__", {})
    if (
        mask_secrets(text) == text
        and _mask_any(exc.args) == exc.args
        and all(_mask_any(v) == v for v in state.values())
    ):
        return exc
    try:
        clone = copy.copy(exc)
        clone.args = _mask_any(exc.args)
        for key, value in state.items():
            masked = _mask_any(value)
            if masked is not value:
                setattr(clone, key, masked)
        clone_text = str(clone)
        if mask_secrets(clone_text) == clone_text:
            return clone
    except Exception:
        pass
    return MaskedError(f"{type(exc).__qualname__}: {mask_secrets(text)}")


class SecretMaskingFilter(logging.Filter):
    """Masks a record's message and traceback text in place; never drops a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not _values:
            return True
        try:
            message = record.getMessage()
        except Exception:  # a bad %-format: leave it to the handler to report, as logging does
            return True
        clean = mask_secrets(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and record.exc_info[0] is not None and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = mask_secrets(record.exc_text)
        if record.stack_info:
            record.stack_info = mask_secrets(record.stack_info)
        return True


FILTER = SecretMaskingFilter()
