"""Every error daskflow raises, in one tree.

Each class also subclasses the builtin a user would naturally catch, so
``except ValueError`` keeps working around a bad option::

    DaskflowError
    ├── ConfigurationError (ValueError)        bad option to @task, @flow or a runner
    │   └── ConcurrencyLimitError              a named limit with no size, or a bad size
    │       └── ConcurrencySlotTimeoutError (TimeoutError)  concurrency(timeout_seconds=) ran out
    ├── ParameterValidationError (ValueError)  a flow parameter failed its type hint
    ├── MissingContextError (RuntimeError)     run-only API used outside a run
    ├── UpstreamFailedError (RuntimeError)     a task's input came from a failed run
    ├── RunTimeoutError (TimeoutError)         timeout_seconds elapsed
    ├── CrashedRunError (RuntimeError)         infrastructure failed: worker died, value unserializable
    ├── CancelledRunError (RuntimeError)       the run was cancelled
    ├── UnhashableInputError (TypeError)       an argument cannot be hashed into a cache key
    ├── UnserializableInputError (TypeError)   an argument cannot travel to a worker
    ├── ResultError (ValueError)               a stored result cannot be used
    │   ├── CorruptResultError                 truncated, unreadable or of the wrong schema
    │   ├── UnsignedResultError                a pickled entry without a valid signature
    │   ├── StaleResultError                   rewritten since it was looked up
    │   ├── UnreadableValueError               a deferred hit whose entry could not be read
    │   └── UnsupportedValueError              a value the typed wrapper cannot store exactly
    ├── ScheduleError (ValueError)             a bad cron/rrule/interval or timezone
    ├── CompileError (TypeError)               a flow cannot be traced ahead into a graph
    ├── SchedulerUnreachableError (ConnectionError)  no Dask scheduler at the address
    ├── RunNotFoundError (LookupError)         no flow run in the run store has that id
    ├── ArtifactError (ValueError, TypeError)  a bad artifact key, table, link or size
    ├── DeploymentError (ValueError)           a bad deployment, deployment file entry or work pool
    │   └── DeploymentNotFoundError (LookupError)  no deployment in the run store has that name
    ├── BlockError (ValueError)                a bad block name or field, or a block that exists
    │   ├── BlockNotFoundError (LookupError)   no block of that kind in the run store has that name
    │   └── SecretKeyError                     no usable key to encrypt or decrypt block secrets
    └── RunStoreError                          the run store cannot be used
        ├── RunStoreUnavailableError (ConnectionError)  unreachable, locked, or refused a statement
        ├── RunStoreVersionError (RuntimeError)  its schema is newer than this daskflow
        ├── AmbiguousRunIdError (LookupError)  a run id prefix matches more than one run
        └── RunInFlightError (RuntimeError)    a deployment's run is in flight under a live lease

Warnings say that something was not done and the run went on::

    DaskflowWarning (UserWarning)
    ├── ResultWarning                          a result was not cached, or an entry was unusable (a miss)
    ├── RunStoreWarning                        run history was not kept
    └── ConcurrencyWarning                     a slot's lease timed out while held

Messages say what went wrong, where (task, argument, line) and how to fix it.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AmbiguousRunIdError",
    "ArtifactError",
    "BlockError",
    "BlockNotFoundError",
    "CancelledRunError",
    "CompileError",
    "ConcurrencyLimitError",
    "ConcurrencySlotTimeoutError",
    "ConcurrencyWarning",
    "ConfigurationError",
    "CorruptResultError",
    "CrashedRunError",
    "DaskflowError",
    "DaskflowWarning",
    "DeploymentError",
    "DeploymentNotFoundError",
    "MissingContextError",
    "ParameterValidationError",
    "ResultError",
    "ResultWarning",
    "RunInFlightError",
    "RunNotFoundError",
    "RunStoreError",
    "RunStoreUnavailableError",
    "RunStoreVersionError",
    "RunStoreWarning",
    "RunTimeoutError",
    "ScheduleError",
    "SecretKeyError",
    "SchedulerUnreachableError",
    "StaleResultError",
    "UnhashableInputError",
    "UnreadableValueError",
    "UnserializableInputError",
    "UnsignedResultError",
    "UnsupportedValueError",
    "UpstreamFailedError",
]


class DaskflowError(Exception):
    """Base class of every error daskflow raises."""


class ConfigurationError(DaskflowError, ValueError):
    """An option given to ``@task``, ``@flow`` or a task runner is invalid."""


class ConcurrencyLimitError(ConfigurationError):
    """A named concurrency limit has no size, or a size that is not a positive int."""


class ConcurrencySlotTimeoutError(ConcurrencyLimitError, TimeoutError):
    """``concurrency(..., timeout_seconds=)`` did not get its slots in time."""


class ParameterValidationError(DaskflowError, ValueError):
    """A flow parameter does not match its type hint; raised before any task runs."""


class MissingContextError(DaskflowError, RuntimeError):
    """An API that needs a running flow or task was used outside one."""


class UpstreamFailedError(DaskflowError, RuntimeError):
    """A task did not run because an input came from a run that did not complete."""


class RunTimeoutError(DaskflowError, TimeoutError):
    """A task or flow ran longer than its ``timeout_seconds``."""


class CrashedRunError(DaskflowError, RuntimeError):
    """The infrastructure failed under a run: a worker died, a value could not be serialized."""


class CancelledRunError(DaskflowError, RuntimeError):
    """The run was cancelled before it finished."""


class UnhashableInputError(DaskflowError, TypeError):
    """An argument cannot be hashed deterministically into a cache key."""


class UnserializableInputError(DaskflowError, TypeError):
    """An argument cannot be serialized to travel to where the task runs."""


class ResultError(DaskflowError, ValueError):
    """A stored result cannot be used."""


class CorruptResultError(ResultError):
    """A stored result is truncated, unreadable or has the wrong schema."""


class UnsignedResultError(ResultError):
    """A pickled result has no signature, or one that does not match the configured key."""


class StaleResultError(ResultError):
    """The entry was rewritten since it was looked up: it holds another version than the one asked for.

    The key is the same, the data may not be (a refresh, an expired value
    computed again, another writer): look the key up again.
    """


class UnreadableValueError(ResultError):
    """A deferred cache hit whose entry could not be read when its value was needed."""


class UnsupportedValueError(ResultError):
    """A value (or a part of it) that the typed wrapper cannot store exactly."""

    def __init__(self, type_name: str, where: str = "", reason: str = "") -> None:
        self.type_name = type_name
        self.where = where
        self.reason = reason
        detail = f" ({reason})" if reason else ""
        super().__init__(f"value{where} is of type {type_name}{detail}")

    def inside(self, segment: str) -> UnsupportedValueError:
        return UnsupportedValueError(self.type_name, segment + self.where, self.reason)


class ScheduleError(DaskflowError, ValueError):
    """A schedule expression or timezone is invalid."""


class CompileError(DaskflowError, TypeError):
    """A flow cannot be traced ahead of time into a Dask graph."""


class SchedulerUnreachableError(DaskflowError, ConnectionError):
    """No Dask scheduler answered at the given address within the timeout."""


class RunNotFoundError(DaskflowError, LookupError):
    """No flow run in the run store has the given id or id prefix."""


class ArtifactError(DaskflowError, ValueError, TypeError):
    """An artifact cannot be created: a bad key, an input of the wrong type, ragged columns, too large.

    Both a ``ValueError`` and a ``TypeError``: the artifact functions check values and types alike.
    """


class DeploymentError(DaskflowError, ValueError):
    """A deployment cannot be built, stored or run: a flow that cannot be imported, a bad
    parameter or template, a bad deployment file entry, an unknown work pool."""


class DeploymentNotFoundError(DeploymentError, LookupError):
    """No deployment in the run store has the given name."""


class BlockError(DaskflowError, ValueError):
    """A block name or field is invalid, or a block is saved over an existing one without ``overwrite``."""


class BlockNotFoundError(BlockError, LookupError):
    """No block of the kind asked for has that name in the run store."""


class SecretKeyError(BlockError):
    """The key for block secrets is missing, malformed, too widely readable, or not the key they were saved with."""


class RunStoreError(DaskflowError):
    """The run store cannot be used."""


class RunStoreUnavailableError(RunStoreError, ConnectionError):
    """The run store's database is unreachable, locked beyond the busy timeout, or refused a statement."""


class RunStoreVersionError(RunStoreError, RuntimeError):
    """The run store's schema was written by a newer daskflow than this one."""


class AmbiguousRunIdError(RunStoreError, LookupError):
    """A run id prefix matches more than one run."""


class RunInFlightError(RunStoreError, RuntimeError):
    """A scheduled time was not claimed: a run of its deployment is in flight under a live lease.

    ``claim`` is that run's claim (a ``daskflow.runstore.deployments.DeploymentRunInfo``).
    """

    def __init__(self, message: str, claim: Any) -> None:
        super().__init__(message)
        self.claim = claim


# -- warnings -----------------------------------------------------------------------------


class DaskflowWarning(UserWarning):
    """Base class of every warning daskflow gives: something was not done, and the run went on."""


class ResultWarning(DaskflowWarning):
    """A cached result could not be written, or an entry could not be used and counts as a miss."""


class RunStoreWarning(DaskflowWarning):
    """Run history was not kept (the runs themselves went on)."""


class ConcurrencyWarning(DaskflowWarning):
    """A slot's lease timed out while it was held: the limit may have been overbooked."""
