"""Every error daskflow raises, in one tree.

Each class also subclasses the builtin a user would naturally catch, so
``except ValueError`` keeps working around a bad option::

    DaskflowError
    ├── ConfigurationError (ValueError)        bad option to @task, @flow or a runner
    │   └── ConcurrencyLimitError              a named limit with no size, or a bad size
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
    │   └── UnsignedResultError                a pickled entry without a valid signature
    ├── ScheduleError (ValueError)             a bad cron/rrule/interval or timezone
    ├── CompileError (TypeError)               a flow cannot be traced ahead into a graph
    ├── SchedulerUnreachableError (ConnectionError)  no Dask scheduler at the address
    ├── RunNotFoundError (LookupError)         no flow run in the run store has that id
    ├── ArtifactError (ValueError, TypeError)  a bad artifact key, table, link or size
    ├── DeploymentError (ValueError)           a bad deployment, deployment file entry or work pool
    │   └── DeploymentNotFoundError (LookupError)  no deployment in the run store has that name
    └── BlockError (ValueError)                a bad block name or field, or a block that exists
        ├── BlockNotFoundError (LookupError)   no block of that kind in the run store has that name
        └── SecretKeyError                     no usable key to encrypt or decrypt block secrets

Messages say what went wrong, where (task, argument, line) and how to fix it.
"""

from __future__ import annotations

__all__ = [
    "ArtifactError",
    "BlockError",
    "BlockNotFoundError",
    "CancelledRunError",
    "CompileError",
    "ConcurrencyLimitError",
    "ConfigurationError",
    "CorruptResultError",
    "CrashedRunError",
    "DaskflowError",
    "DeploymentError",
    "DeploymentNotFoundError",
    "MissingContextError",
    "ParameterValidationError",
    "ResultError",
    "RunNotFoundError",
    "RunTimeoutError",
    "ScheduleError",
    "SecretKeyError",
    "SchedulerUnreachableError",
    "UnhashableInputError",
    "UnserializableInputError",
    "UnsignedResultError",
    "UpstreamFailedError",
]


class DaskflowError(Exception):
    """Base class of every error daskflow raises."""


class ConfigurationError(DaskflowError, ValueError):
    """An option given to ``@task``, ``@flow`` or a task runner is invalid."""


class ConcurrencyLimitError(ConfigurationError):
    """A named concurrency limit has no size, or a size that is not a positive int."""


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
