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
handler that formats ``exc_info`` itself, are not covered by it; the same
filter (:data:`daskflow.secrets_mask.FILTER`) is therefore also on daskflow's
handlers (console, run history, Dask worker forwarder), which see propagated
records of child loggers, and failed states mask their message and traceback
(:mod:`daskflow.secrets_mask`, where the values are registered).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from daskflow import secrets_mask

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
    return secrets_mask.mask_secrets(text)


# The filter lives in daskflow.secrets_mask (a low layer, so that states and the
# handlers of daskflow.logging and the Dask worker can use it too).
SecretRedactingFilter = secrets_mask.SecretMaskingFilter
_FILTER = secrets_mask.FILTER


def remember_secret(value: Any) -> None:
    """Redact ``value`` (a string, or the strings in a dict or list) from daskflow's log records from now on."""
    global _installed
    found = [s for s in _strings(value) if len(s) >= MIN_LENGTH]
    if not found:
        return
    with _lock:
        _secrets.update(found)
        secrets_mask.add_secrets(found)
        if not _installed:
            for name in LOGGER_NAMES:
                logging.getLogger(name).addFilter(_FILTER)
            _installed = True
