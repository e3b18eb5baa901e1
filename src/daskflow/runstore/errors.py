"""What can go wrong with the run store, as errors for its readers and a warning for its writer.

::

    DaskflowError
    └── RunStoreError                                   the run store cannot be used
        ├── RunStoreUnavailableError (ConnectionError)  unreachable, locked, or refused the statement
        ├── RunStoreVersionError (RuntimeError)         its schema is newer than this daskflow
        └── AmbiguousRunIdError (LookupError)           a run id prefix matches several runs

    DaskflowWarning (UserWarning)
    └── RunStoreWarning                                 history was not kept; the runs went on

The classes are defined in :mod:`daskflow.exceptions`, with every other error and
warning of daskflow; this module names the run store's part of that tree. Readers (the CLI, a notebook) get the errors: whoever asks for history wants to
know why there is none. Writers never do: the run store is a record of runs, not
a part of them, so :class:`~daskflow.runstore.writer.RunStoreWriter` turns every
failure into one :class:`RunStoreWarning` per outage.
"""

from __future__ import annotations

from daskflow.exceptions import (
    AmbiguousRunIdError,
    RunStoreError,
    RunStoreUnavailableError,
    RunStoreVersionError,
    RunStoreWarning,
)

__all__ = [
    "AmbiguousRunIdError",
    "RunStoreError",
    "RunStoreUnavailableError",
    "RunStoreVersionError",
    "RunStoreWarning",
]
