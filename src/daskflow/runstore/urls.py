"""Where the run store lives: the URL from configuration, and the URL fit to print.

The run store is any SQLAlchemy URL. ``None`` means the dask.config key
``daskflow.runstore.url``, and when that is unset too, an SQLite file
``runs.db`` in the daskflow home (``~/.daskflow``, moved by ``DASKFLOW_HOME``).
Nothing here imports SQLAlchemy: the writer resolves and prints URLs on the
caller's side without paying for it.
"""

from __future__ import annotations

import re

from daskflow import settings

__all__ = ["DEFAULT_FILE_NAME", "mask_password", "resolve_url"]

DEFAULT_FILE_NAME = "runs.db"

# scheme://user:password@host -> scheme://user:***@host; the user and host stay readable.
_PASSWORD = re.compile(r"(?P<head>^[^:/?#]+://[^:/?#@]*:)(?P<password>[^@/?#]*)(?P<tail>@)")


def resolve_url(url: str | None = None) -> str:
    """The run store URL to use: ``url``, else ``daskflow.runstore.url``, else the home's SQLite file."""
    if url:
        return str(url)
    configured = settings.get("runstore.url", None)
    if configured:
        return str(configured)
    return f"sqlite:///{settings.home() / DEFAULT_FILE_NAME}"


def mask_password(url: str) -> str:
    """``url`` with its password replaced by ``***``, for messages and logs."""
    return _PASSWORD.sub(r"\g<head>***\g<tail>", url, count=1)
