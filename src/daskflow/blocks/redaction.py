"""Keep loaded secrets out of log records: a filter that writes ``***`` in their place.

When a block's secret field is decrypted (:meth:`Block.load`), its text — a
string, or every string inside a dict — is remembered here, in this process
only, and :class:`SecretRedactingFilter` is installed on daskflow's loggers
(``daskflow``, ``daskflow.flow_runs``, ``daskflow.task_runs``: where run
loggers, captured prints and the engine's messages are logged). The filter
rewrites each record in place before any handler sees it: the formatted
message, and the traceback text, which it formats once and stores as
``exc_text`` (what daskflow's handlers and :class:`logging.Formatter` print).

Strings shorter than :data:`MIN_LENGTH` are not redacted: replacing every
``"a"`` in every log line would hide more than the secret. A logger filter only
sees records logged to that very logger, so records of other loggers, and a
handler that formats ``exc_info`` itself, are not covered.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

__all__ = ["LOGGER_NAMES", "MIN_LENGTH", "SecretRedactingFilter", "redact", "remember_secret"]

MIN_LENGTH = 4
LOGGER_NAMES = ("daskflow", "daskflow.flow_runs", "daskflow.task_runs")
REDACTED = "***"

_secrets: set[str] = set()
_lock = threading.Lock()
_installed = False


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def redact(text: str) -> str:
    """``text`` with every remembered secret replaced by ``***``, longest first (a secret may contain another)."""
    for secret in sorted(_secrets, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


class SecretRedactingFilter(logging.Filter):
    """Rewrites a record's message and traceback text without the remembered secrets; never drops a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not _secrets:
            return True
        try:
            message = record.getMessage()
        except Exception:  # a bad %-format: leave it to the handler to report, as logging does
            return True
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and record.exc_info[0] is not None and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


_FILTER = SecretRedactingFilter()


def remember_secret(value: Any) -> None:
    """Redact ``value`` (a string, or the strings in a dict or list) from daskflow's log records from now on."""
    global _installed
    found = [s for s in _strings(value) if len(s) >= MIN_LENGTH]
    if not found:
        return
    with _lock:
        _secrets.update(found)
        if not _installed:
            for name in LOGGER_NAMES:
                logging.getLogger(name).addFilter(_FILTER)
            _installed = True
