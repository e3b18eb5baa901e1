"""The options of ``@task`` and ``@flow``, declared once and checked once.

``TaskOptions`` and ``FlowOptions`` are frozen dataclasses sharing a base of
the options both kinds take. The decorators, ``with_options`` and the engine
all use these classes, so an option is named, defaulted, normalised and
validated in exactly one place. Validation happens when a function is
decorated, not when it first runs: a typo or a bad value is reported at the
line that defines the task, naming the task, the option and the fix.
"""

from __future__ import annotations

import difflib
import inspect
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from datetime import timedelta
from numbers import Real
from typing import Any, TypeVar

from daskflow.exceptions import ConfigurationError

__all__ = [
    "CACHE_ISOLATION_LEVELS",
    "FlowOptions",
    "RunOptions",
    "TaskOptions",
    "build_options",
    "template_fields",
    "with_changes",
]

Hook = Callable[..., Any]

# None: identical runs in flight in one process compute once (cheap, the default);
# "serializable": once per cluster (a distributed.Lock per key on Dask); "none": no waiting.
CACHE_ISOLATION_LEVELS = (None, "none", "serializable")
Options = TypeVar("Options", bound="RunOptions")


@dataclass(frozen=True, kw_only=True)
class RunOptions:
    """Options that tasks and flows share."""

    name: str
    description: str | None = None
    version: str | None = None
    retries: int = 0
    retry_delay_seconds: float | tuple[float, ...] | Callable[[int], Any] = 0
    timeout_seconds: float | None = None
    log_prints: bool | None = None
    persist_result: bool | None = None
    result_storage: Any = None
    on_completion: tuple[Hook, ...] = ()
    on_failure: tuple[Hook, ...] = ()
    on_running: tuple[Hook, ...] = ()
    # Prefect keeps a run's result in memory unless told not to; daskflow always does (a state
    # holds its value), so False is accepted and changes nothing (README: Coming from Prefect).
    cache_result_in_memory: bool = True

    kind = "run"

    def where(self) -> str:
        return f"{self.kind} {self.name!r}"

    def __post_init__(self) -> None:
        where = self.where()
        if not isinstance(self.name, str) or not self.name.strip():
            raise ConfigurationError(f"{self.kind}: name must be a non-empty string, got {self.name!r}")
        _set(self, "retries", _non_negative_int(self.retries, where, "retries"))
        _set(self, "retry_delay_seconds", _delays(self.retry_delay_seconds, where))
        if self.timeout_seconds is not None:
            _set(self, "timeout_seconds", _positive_number(self.timeout_seconds, where, "timeout_seconds"))
        for name in ("log_prints", "persist_result", "cache_result_in_memory"):
            _optional_bool(getattr(self, name), where, name)
        for name in ("on_completion", "on_failure", "on_running", *self._extra_hooks()):
            _set(self, name, _hooks(getattr(self, name), where, name))

    def _extra_hooks(self) -> tuple[str, ...]:
        return ()


@dataclass(frozen=True, kw_only=True)
class TaskOptions(RunOptions):
    """Every option ``@task`` takes (see api.md for what each does)."""

    tags: frozenset[str] = frozenset()
    retry_jitter_factor: float | None = None
    retry_condition_fn: Callable[..., bool] | None = None
    cache_policy: Any = None
    cache_key_fn: Callable[..., str | None] | None = None
    cache_expiration: timedelta | None = None
    refresh_cache: bool | None = None
    cache_isolation: str | None = None
    result_serializer: str | None = None
    task_run_name: str | Callable[[], str] | None = None
    concurrency_limit: int | None = None
    resources: Mapping[str, float] | None = None
    # Prefect's: the key the result is stored (and looked up) under, a template over the run's
    # parameters, flow_run and task_run; setting it persists the result (see daskflow.tasks).
    result_storage_key: str | None = None
    on_commit: tuple[Hook, ...] = ()
    on_rollback: tuple[Hook, ...] = ()
    viz_return_value: Any = None  # Prefect's flow visualisation placeholder; daskflow.compile draws real values

    kind = "task"

    def _extra_hooks(self) -> tuple[str, ...]:
        return ("on_commit", "on_rollback")

    def __post_init__(self) -> None:
        super().__post_init__()
        where = self.where()
        _set(self, "tags", _tags(self.tags, where))
        if self.retry_jitter_factor is not None:
            _set(
                self,
                "retry_jitter_factor",
                _non_negative_number(self.retry_jitter_factor, where, "retry_jitter_factor"),
            )
        _optional_callable(self.retry_condition_fn, where, "retry_condition_fn")
        _optional_callable(self.cache_key_fn, where, "cache_key_fn")
        if self.cache_expiration is not None:
            _set(self, "cache_expiration", _duration(self.cache_expiration, where, "cache_expiration"))
        _optional_bool(self.refresh_cache, where, "refresh_cache")
        if self.cache_isolation not in CACHE_ISOLATION_LEVELS:
            raise ConfigurationError(
                f"{where}: cache_isolation must be one of {', '.join(map(repr, CACHE_ISOLATION_LEVELS))}, "
                f"got {self.cache_isolation!r}: None runs identical calls once per process, "
                "'serializable' once per cluster, 'none' never waits"
            )
        _set(self, "result_serializer", _serializer(self.result_serializer, where))
        if self.result_storage_key is not None:
            if not isinstance(self.result_storage_key, str) or not self.result_storage_key.strip():
                raise ConfigurationError(
                    f"{where}: result_storage_key must be a non-empty string such as "
                    f"'sales-{{parameters[day]}}', got {self.result_storage_key!r}"
                )
            _check_storage_key_template(self.result_storage_key, where)
            if self.persist_result is None:
                _set(self, "persist_result", True)
        _name_template(self.task_run_name, where, "task_run_name")
        if self.concurrency_limit is not None:
            _set(self, "concurrency_limit", _positive_int(self.concurrency_limit, where, "concurrency_limit"))
        if self.resources is not None:
            _set(self, "resources", _resources(self.resources, where))


@dataclass(frozen=True, kw_only=True)
class FlowOptions(RunOptions):
    """Every option ``@flow`` takes (see api.md for what each does)."""

    task_runner: Any = None
    validate_parameters: bool = True
    flow_run_name: str | Callable[[], str] | None = None
    on_crashed: tuple[Hook, ...] = ()
    on_cancellation: tuple[Hook, ...] = ()
    concurrency_limit: Mapping[str, int] | None = None
    result_serializer: str | None = None

    kind = "flow"

    def _extra_hooks(self) -> tuple[str, ...]:
        return ("on_crashed", "on_cancellation")

    def __post_init__(self) -> None:
        super().__post_init__()
        where = self.where()
        _optional_bool(self.validate_parameters, where, "validate_parameters")
        _set(self, "result_serializer", _serializer(self.result_serializer, where))
        _name_template(self.flow_run_name, where, "flow_run_name")
        if self.task_runner is not None:
            runner = self.task_runner
            if isinstance(runner, type):
                runner = runner()
            if not (hasattr(runner, "submit_batch") and hasattr(runner, "duplicate")):
                raise ConfigurationError(
                    f"{where}: task_runner must be a task runner such as ThreadPoolTaskRunner() "
                    f"or DaskTaskRunner(), got {type(runner).__name__}"
                )
            _set(self, "task_runner", runner)
        if self.concurrency_limit is not None:
            _set(self, "concurrency_limit", _limits(self.concurrency_limit, where))


def build_options(cls: type[Options], fn: Callable[..., Any], given: Mapping[str, Any]) -> Options:
    """Options of class ``cls`` for the function ``fn`` from the keywords a user gave.

    Unknown keywords are refused with the closest known option as a suggestion;
    template options are checked against the function's parameters.
    """
    known = {f.name for f in fields(cls)}
    kind = cls.kind
    for key in given:
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigurationError(
                f"@{kind} on {_fn_name(fn)!r} got an unknown option {key!r}{hint}; "
                f"the options are: {', '.join(sorted(known))}"
            )
    values = dict(given)
    if values.get("name") is None:
        default = _fn_name(fn)
        values["name"] = default.replace("_", "-") if kind == "flow" else default
    options = cls(**values)
    template = getattr(options, f"{kind}_run_name", None)
    if isinstance(template, str):
        _check_template_against(fn, template, options.where(), f"{kind}_run_name")
    return options


def template_fields(template: str) -> list[str]:
    """The top-level names a ``str.format`` template refers to."""
    names = []
    for _, field_name, _, _ in string.Formatter().parse(template):
        if field_name:
            names.append(field_name.split(".", 1)[0].split("[", 1)[0])
    return names


def _check_template_against(fn: Callable[..., Any], template: str, where: str, option: str) -> None:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    for name in template_fields(template):
        if name not in params:
            raise ConfigurationError(
                f"{where}: {option}={template!r} refers to {{{name}}}, which is not a parameter of "
                f"{_fn_name(fn)}({', '.join(params)}); use one of the parameter names, or a callable"
            )


def _fn_name(fn: Callable[..., Any]) -> str:
    return getattr(fn, "__name__", type(fn).__name__)


def _set(obj: object, name: str, value: Any) -> None:
    object.__setattr__(obj, name, value)  # normalising a frozen dataclass during __post_init__


def _is_number(value: Any) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def _non_negative_int(value: Any, where: str, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigurationError(f"{where}: {name} must be a whole number >= 0, got {value!r}")
    return value


def _positive_int(value: Any, where: str, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(f"{where}: {name} must be a whole number >= 1, got {value!r}")
    return value


def _non_negative_number(value: Any, where: str, name: str) -> float:
    if not _is_number(value) or value < 0:
        raise ConfigurationError(f"{where}: {name} must be a number >= 0, got {value!r}")
    return float(value)


def _positive_number(value: Any, where: str, name: str) -> float:
    if not _is_number(value) or value <= 0:
        raise ConfigurationError(f"{where}: {name} must be a number of seconds > 0, got {value!r}")
    return float(value)


def _optional_bool(value: Any, where: str, name: str) -> None:
    if value is not None and not isinstance(value, bool):
        raise ConfigurationError(f"{where}: {name} must be True or False, got {value!r}")


def _optional_callable(value: Any, where: str, name: str) -> None:
    if value is not None and not callable(value):
        raise ConfigurationError(f"{where}: {name} must be a function, got {type(value).__name__}")


def _delays(value: Any, where: str) -> float | tuple[float, ...] | Callable[[int], Any]:
    if callable(value):
        return value  # type: ignore[no-any-return]
    if _is_number(value):
        return _non_negative_number(value, where, "retry_delay_seconds")
    if isinstance(value, (list, tuple)):
        return tuple(_non_negative_number(v, where, "retry_delay_seconds[...]") for v in value)
    raise ConfigurationError(
        f"{where}: retry_delay_seconds must be a number, a list of numbers (one per retry) "
        f"or a function of the retry count such as exponential_backoff(10), got {value!r}"
    )


def _hooks(value: Any, where: str, name: str) -> tuple[Hook, ...]:
    if value is None:
        return ()
    hooks = (value,) if callable(value) else value
    if not isinstance(hooks, (list, tuple)) or not all(callable(h) for h in hooks):
        raise ConfigurationError(f"{where}: {name} must be a function or a list of functions, got {value!r}")
    return tuple(hooks)


def _tags(value: Any, where: str) -> frozenset[str]:
    if value is None:
        return frozenset()
    items = [value] if isinstance(value, str) else value
    try:
        tags = frozenset(items)
    except TypeError:
        raise ConfigurationError(f"{where}: tags must be a list of strings, got {value!r}") from None
    if not all(isinstance(t, str) for t in tags):
        raise ConfigurationError(f"{where}: tags must be a list of strings, got {value!r}")
    return tags


def _duration(value: Any, where: str, name: str) -> timedelta:
    if isinstance(value, timedelta):
        if value.total_seconds() <= 0:
            raise ConfigurationError(f"{where}: {name} must be positive, got {value!r}")
        return value
    return timedelta(seconds=_positive_number(value, where, name))


def _name_template(value: Any, where: str, name: str) -> None:
    if value is not None and not isinstance(value, str) and not callable(value):
        raise ConfigurationError(
            f"{where}: {name} must be a format string over the parameters, e.g. 'load-{{table}}', "
            f"or a function returning a string; got {type(value).__name__}"
        )


# Prefect's serializer names -> daskflow's. "json" values are stored in the typed Parquet wrapper,
# which holds every JSON value (and refuses what JSON could not hold, as Prefect's JSON serializer does).
_SERIALIZERS = {None: None, "parquet": "parquet", "json": "parquet", "pickle": "pickle", "cloudpickle": "pickle"}


def _serializer(value: Any, where: str) -> str | None:
    if not isinstance(value, (str, type(None))) or value not in _SERIALIZERS:
        raise ConfigurationError(
            f"{where}: result_serializer must be 'parquet' (the default; 'json' is accepted as Prefect's name for "
            f"plain values) or 'pickle', got {value!r}"
        )
    return _SERIALIZERS[value]


_STORAGE_KEY_NAMES = ("parameters", "flow_run", "task_run", "flow", "task")


def _check_storage_key_template(template: str, where: str) -> None:
    try:
        names = template_fields(template)
    except ValueError as exc:
        raise ConfigurationError(f"{where}: result_storage_key={template!r} is not a valid template: {exc}") from None
    for name in names:
        if name not in _STORAGE_KEY_NAMES:
            raise ConfigurationError(
                f"{where}: result_storage_key={template!r} refers to {{{name}}}; a key template may use "
                "{parameters[name]}, {flow_run.id}, {flow_run.name}, {task_run.id}, {task_run.name} and the like"
            )


def _resources(value: Any, where: str) -> dict[str, float]:
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and _is_number(v) and v > 0 for k, v in value.items()
    ):
        raise ConfigurationError(
            f"{where}: resources must map resource names to positive amounts, e.g. {{'GPU': 1}}; got {value!r}"
        )
    return {k: float(v) for k, v in value.items()}


def _limits(value: Any, where: str) -> dict[str, int]:
    if not isinstance(value, Mapping):
        raise ConfigurationError(
            f"{where}: concurrency_limit must map task names or tags to sizes, "
            f"e.g. {{'extract-table': 10}}; got {value!r}"
        )
    limits = {}
    for key, size in value.items():
        if not isinstance(key, str):
            raise ConfigurationError(f"{where}: concurrency_limit keys must be task names or tags, got {key!r}")
        limits[key] = _positive_int(size, where, f"concurrency_limit[{key!r}]")
    return limits


def with_changes(options: Options, changes: Mapping[str, Any], fn: Callable[..., Any]) -> Options:
    """A copy of ``options`` with ``changes`` applied and validated again."""
    merged = {f.name: getattr(options, f.name) for f in fields(options)}
    merged.update(changes)
    return build_options(type(options), fn, merged)
