"""What can go wrong with the run store, as errors for its readers and a warning for its writer.

::

    DaskflowError
    └── RunStoreError                                   the run store cannot be used
        ├── RunStoreUnavailableError (ConnectionError)  unreachable, locked, or refused the statement
        ├── RunStoreVersionError (RuntimeError)         its schema is newer than this daskflow
        └── AmbiguousRunIdError (LookupError)           a run id prefix matches several runs

    UserWarning
    └── RunStoreWarning                                 history was not kept; the runs went on

Readers (the CLI, a notebook) get the errors: whoever asks for history wants to
know why there is none. Writers never do: the run store is a record of runs, not
a part of them, so :class:`~daskflow.runstore.writer.RunStoreWriter` turns every
failure into one :class:`RunStoreWarning` per outage.
"""

from __future__ import annotations

from daskflow.exceptions import DaskflowError

__all__ = [
    "AmbiguousRunIdError",
    "RunStoreError",
    "RunStoreUnavailableError",
    "RunStoreVersionError",
    "RunStoreWarning",
]


class RunStoreError(DaskflowError):
    """The run store cannot be used."""


class RunStoreUnavailableError(RunStoreError, ConnectionError):
    """The run store's database is unreachable, locked beyond the busy timeout, or refused a statement."""


class RunStoreVersionError(RunStoreError, RuntimeError):
    """The run store's schema was written by a newer daskflow than this one."""


class AmbiguousRunIdError(RunStoreError, LookupError):
    """A run id prefix matches more than one run."""


class RunStoreWarning(UserWarning):
    """Run history was not kept (the runs themselves went on)."""
