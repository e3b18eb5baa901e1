"""Artifacts: a markdown text, a table or a link that a run publishes for people to read.

``create_markdown_artifact``, ``create_table_artifact`` and ``create_link_artifact``
check their input, turn it into text at once (markdown as it is, a table as JSON
rows, a link as a small JSON object) and publish an
:class:`~daskflow.runstore.ArtifactRecord` tagged with the ids of the run they are
called in: the task run and its flow run, the flow run in a flow's body, none
outside runs. Each returns the artifact's id, a ``str`` UUID.

Publishing is a log record on the ``daskflow.artifacts`` logger carrying the
record as its ``artifact`` attribute; that logger does not propagate, so an
artifact never reaches the console, the run logs or the user's handlers. The
run history attaches a handler to it that queues the record for the run store's
writer thread (no database round trip in the caller), or drops it when history
is off; on a Dask worker the runner's forwarder attaches one too, and sends the
record to the client with the run's log records, where it is published again
and kept. Logging is the bus because it is the one channel that the run
history, a worker's forwarder and a user's own handler can all listen to
without importing each other (this module sits beside the engine and may not
import it). Nothing happens until an artifact is created: no handler runs, no
module is imported.

Table data, the shape the CLI and the report read back, is a JSON list of row
objects:

* a pandas DataFrame gives its records; its index is dropped when it is the
  default ``0..n-1`` unnamed ``RangeIndex`` and kept as leading column(s)
  otherwise (named after the index, ``"index"`` when unnamed, as
  ``DataFrame.reset_index`` names it);
* a list of dicts is taken as rows (keys become strings);
* a dict of equal-length columns becomes rows;
* a list of lists becomes rows keyed ``"0"``, ``"1"``, ... (rows may differ in length).

Values are made JSON-safe: NaN, infinities, ``None``, NaT and ``pd.NA`` become
``null``; datetimes, dates and times their ISO text; numpy scalars Python values;
lists and dicts inside cells are converted likewise; anything else its ``str``.
A table of more than :data:`MAX_TABLE_ROWS` rows, or any artifact whose text is
over :data:`MAX_ARTIFACT_BYTES`, is refused: an artifact is a summary for
reading, and bulk data belongs in a task's persisted result.
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import re
import sys
from collections.abc import Generator, Mapping
from typing import Any

from daskflow.context import get_flow_run_context, get_task_run_context
from daskflow.exceptions import ArtifactError
from daskflow.logging import ARTIFACT_LOGGER
from daskflow.runstore import ArtifactRecord, RunStore

__all__ = [
    "MAX_ARTIFACT_BYTES",
    "MAX_TABLE_ROWS",
    "Artifact",
    "ArtifactId",
    "create_image_artifact",
    "create_link_artifact",
    "create_markdown_artifact",
    "create_progress_artifact",
    "create_table_artifact",
    "publish_artifact",
    "update_progress_artifact",
]

MAX_TABLE_ROWS = 10_000
MAX_ARTIFACT_BYTES = 5 * 1024 * 1024

_KEY = re.compile(r"[a-z0-9-]+")
_logger = logging.getLogger(ARTIFACT_LOGGER)


class ArtifactId(str):
    """An artifact's id, as the ``create_*_artifact`` functions return it: a ``str`` that may also be awaited.

    Prefect's functions are awaited in async code and called plainly elsewhere. Here the
    artifact is made at the call either way (it is a quick hand-over to the run history),
    so ``await create_markdown_artifact(...)`` in an async flow and the plain call both
    work, and an async flow that forgets the ``await`` loses no artifact.
    """

    __slots__ = ()

    def __await__(self) -> Generator[Any, None, str]:
        return str(self)
        yield  # a generator that finishes at once: awaiting gives the id


def create_markdown_artifact(markdown: str, key: str | None = None, description: str | None = None) -> str:
    """Publish ``markdown`` as an artifact of the current run; returns the artifact's id.

    ``key`` (lowercase letters, digits and dashes) names an artifact across runs:
    each run's artifact of one key is a new version of it.
    """
    _check_options(key, description)
    if not isinstance(markdown, str):
        raise ArtifactError(
            f"create_markdown_artifact() takes the markdown as a str, got {type(markdown).__name__}. "
            "Fix: pass text, e.g. f'# Report\\n{value}'."
        )
    return _create("markdown", markdown, key, description)


def create_table_artifact(table: Any, key: str | None = None, description: str | None = None) -> str:
    """Publish ``table`` as an artifact of the current run; returns the artifact's id.

    ``table`` is a pandas DataFrame, a list of dicts (rows), a dict of equal-length
    columns or a list of lists (rows); it is stored as JSON rows (see the module's
    docstring for the exact shape).
    """
    _check_options(key, description)
    rows = _table_rows(table)
    if len(rows) > MAX_TABLE_ROWS:
        raise ArtifactError(_too_large(f"a table of {len(rows):,} rows (the limit is {MAX_TABLE_ROWS:,})"))
    safe_rows = [{name: _json_safe(value) for name, value in row.items()} for row in rows]
    data = json.dumps(safe_rows, ensure_ascii=False, allow_nan=False)
    return _create("table", data, key, description)


def create_link_artifact(
    link: str, link_text: str | None = None, key: str | None = None, description: str | None = None
) -> str:
    """Publish a link (and the text to show for it) as an artifact of the current run; returns its id."""
    _check_options(key, description)
    if not isinstance(link, str):
        raise ArtifactError(
            f"create_link_artifact() takes the link as a str URL, got {type(link).__name__}. "
            "Fix: pass the address as text, e.g. path.as_uri() or 'https://...'."
        )
    if link_text is not None and not isinstance(link_text, str):
        raise ArtifactError(
            f"link_text must be a str or None, got {type(link_text).__name__}. Fix: pass link_text=str(...)."
        )
    return _create("link", json.dumps({"link": link, "link_text": link_text}, ensure_ascii=False), key, description)


def create_image_artifact(image_url: str, key: str | None = None, description: str | None = None) -> str:
    """Publish an image by its URL as an artifact of the current run; returns its id (data ``{"image_url": url}``)."""
    _check_options(key, description)
    if not isinstance(image_url, str) or not image_url:
        raise ArtifactError(
            f"create_image_artifact() takes the image's URL as a non-empty str, got {image_url!r}. "
            "Fix: upload the image where readers can reach it and pass its address."
        )
    return _create("image", json.dumps({"image_url": image_url}, ensure_ascii=False), key, description)


# The progress artifacts created in this process: id -> (key, description, flow run id, task run id),
# so that an update is kept against the same run and key as the artifact it updates.
_progress: dict[str, tuple[str | None, str | None, str | None, str | None]] = {}


def create_progress_artifact(progress: float, key: str | None = None, description: str | None = None) -> str:
    """Publish a progress between 0 and 100 as an artifact of the current run; returns its id for updates."""
    _check_options(key, description)
    value = _percent(progress)
    artifact_id = _create("progress", json.dumps({"progress": value}), key, description)
    flow_run_id, task_run_id = _run_ids()
    _progress[artifact_id] = (key, description, flow_run_id, task_run_id)
    return artifact_id


def update_progress_artifact(artifact_id: str, progress: float, description: str | None = None) -> str:
    """Record a new progress for the progress artifact ``artifact_id``; returns the id of the update.

    The run store appends: an update is a new record of the same key and run,
    whose data names the artifact it updates (``{"progress": 80.0, "updates": id}``);
    the newest record of a key is the current progress.
    """
    if not isinstance(artifact_id, str) or not artifact_id:
        raise ArtifactError(
            f"update_progress_artifact() needs the id create_progress_artifact returned, got {artifact_id!r}."
        )
    value = _percent(progress)
    key, first_description, flow_run_id, task_run_id = _progress.get(artifact_id, (None, None, *_run_ids()))
    _check_options(key, description)
    artifact = ArtifactRecord(
        type="progress",
        data=json.dumps({"progress": value, "updates": artifact_id}),
        key=key,
        description=description if description is not None else first_description,
        flow_run_id=flow_run_id,
        task_run_id=task_run_id,
    )
    publish_artifact(artifact)
    return ArtifactId(artifact.id)


def _percent(progress: Any) -> float:
    if isinstance(progress, bool) or not isinstance(progress, int | float) or not 0 <= progress <= 100:
        raise ArtifactError(
            f"a progress is a number from 0 to 100 (percent), got {progress!r}. Fix: e.g. 100 * done / total."
        )
    return float(progress)


def _run_ids() -> tuple[str | None, str | None]:
    task_ctx = get_task_run_context()
    if task_ctx is not None:
        return task_ctx.flow_run_id, task_ctx.task_run.id
    flow_ctx = get_flow_run_context()
    return (flow_ctx.flow_run.id if flow_ctx is not None else None), None


class Artifact:
    """Prefect's ``Artifact`` object: ``Artifact(type=..., key=..., data=...).create()`` and ``Artifact.get(key)``.

    ``type`` is one of markdown, table, link, image, progress; ``data`` what the
    matching ``create_*_artifact`` function takes (for a link, the URL). ``get``
    reads the newest artifact of a key from the run store (what history has
    written so far: records are written in batches, within a second).
    """

    def __init__(self, type: str, data: Any = None, key: str | None = None, description: str | None = None) -> None:
        self.type = type
        self.data = data
        self.key = key
        self.description = description
        self.id: str | None = None

    def __repr__(self) -> str:
        return f"Artifact(type={self.type!r}, key={self.key!r}, id={self.id!r})"

    def create(self) -> Artifact:
        makers: dict[str, Any] = {
            "markdown": create_markdown_artifact,
            "table": create_table_artifact,
            "link": create_link_artifact,
            "image": create_image_artifact,
            "progress": create_progress_artifact,
        }
        maker = makers.get(self.type)
        if maker is None:
            raise ArtifactError(f"Artifact type {self.type!r} is not one of {', '.join(makers)}.")
        self.id = maker(self.data, key=self.key, description=self.description)
        return self

    @classmethod
    def get(cls, key: str, *, url: str | None = None) -> Artifact | None:
        """The newest artifact of ``key`` in the run store, or None; its ``data`` as stored (JSON text decoded)."""
        _check_options(key, None)
        with RunStore(url) as store:
            found = store.artifacts(key=key, limit=1)
        if not found:
            return None
        info = found[0]
        try:
            data: Any = info.data if info.type == "markdown" else json.loads(info.data)
        except ValueError:
            data = info.data
        artifact = cls(info.type, data, info.key, info.description)
        artifact.id = info.id
        return artifact


def publish_artifact(artifact: ArtifactRecord) -> None:
    """Hand a built artifact to whoever listens on the ``daskflow.artifacts`` logger.

    The create functions call it; a task runner calls it on the client for an
    artifact that a worker sent.
    """
    if not _logger.handlers:  # nobody keeps artifacts in this process
        return
    record = logging.makeLogRecord(
        {
            "name": ARTIFACT_LOGGER,
            "levelno": logging.INFO,
            "levelname": "INFO",
            "msg": "%s artifact %s",
            "args": (artifact.type, artifact.key or artifact.id),
            "created": artifact.created,
            "flow_run_id": artifact.flow_run_id,
            "task_run_id": artifact.task_run_id,
            "artifact": artifact,
        }
    )
    # handle(), not log(): the record is data, not a message, so the logging level must not drop it.
    _logger.handle(record)


def _create(type_: str, data: str, key: str | None, description: str | None) -> str:
    size = (
        len(data.encode("utf-8")) if len(data) * 4 > MAX_ARTIFACT_BYTES else len(data)
    )  # encode only when it may matter
    if size > MAX_ARTIFACT_BYTES:
        raise ArtifactError(
            _too_large(f"a {type_} artifact of {size / 2**20:.1f} MiB (the limit is {MAX_ARTIFACT_BYTES // 2**20} MiB)")
        )
    flow_run_id = task_run_id = None
    task_ctx = get_task_run_context()
    if task_ctx is not None:
        task_run_id, flow_run_id = task_ctx.task_run.id, task_ctx.flow_run_id
    else:
        flow_ctx = get_flow_run_context()
        if flow_ctx is not None:
            flow_run_id = flow_ctx.flow_run.id
    artifact = ArtifactRecord(
        type=type_, data=data, key=key, description=description, flow_run_id=flow_run_id, task_run_id=task_run_id
    )
    publish_artifact(artifact)
    return ArtifactId(artifact.id)


def _check_options(key: Any, description: Any) -> None:
    """Checked first, before a table is converted: a bad key should not cost a conversion."""
    if description is not None and not isinstance(description, str):
        raise ArtifactError(f"an artifact's description must be a str or None, got {type(description).__name__}.")
    if key is None or (isinstance(key, str) and _KEY.fullmatch(key)):
        return
    if not isinstance(key, str):
        raise ArtifactError(
            f"an artifact key must be a str, got {type(key).__name__}. Fix: pass key='my-report' or no key."
        )
    suggestion = re.sub(r"[^a-z0-9-]+", "-", key.lower()).strip("-") or "my-report"
    raise ArtifactError(
        f"artifact key {key!r} is not valid: a key may contain only lowercase letters, digits and dashes. "
        f"Fix: use key={suggestion!r}."
    )


def _too_large(what: str) -> str:
    return (
        f"{what} is too large for an artifact, which is a summary for people to read. Fix: "
        "1) publish a summary (head(), describe(), aggregates) as the artifact; "
        "2) keep the full data as a task's result (persist_result=True) and link to it with create_link_artifact()."
    )


def _table_rows(table: Any) -> list[Mapping[str, Any]]:
    """The table as a list of row mappings with string keys (values not yet JSON-safe)."""
    pandas = sys.modules.get("pandas")  # a DataFrame implies pandas is imported: never import it here
    if pandas is not None and isinstance(table, pandas.DataFrame):
        return _frame_rows(table, pandas)
    if isinstance(table, Mapping):
        return _column_rows(table)
    if isinstance(table, (list, tuple)):
        if all(isinstance(row, Mapping) for row in table):
            return [{str(name): value for name, value in row.items()} for row in table]
        if all(isinstance(row, (list, tuple)) for row in table):
            return [{str(i): value for i, value in enumerate(row)} for row in table]
        kinds = sorted({type(row).__name__ for row in table})
        raise ArtifactError(
            f"create_table_artifact() got a list whose items are {', '.join(kinds)}: the rows must be all dicts "
            "(one per row) or all lists (one per row). Fix: make every row the same kind."
        )
    raise ArtifactError(
        f"create_table_artifact() cannot make a table of a {type(table).__name__}. It takes a pandas DataFrame, "
        "a list of dicts (rows), a dict of equal-length columns, or a list of lists (rows). "
        "Fix: convert it, e.g. series.to_frame(), array.tolist() or [dict(row) for row in rows]."
    )


def _frame_rows(frame: Any, pandas: Any) -> list[Mapping[str, Any]]:
    if len(frame) > MAX_TABLE_ROWS:  # before converting anything
        raise ArtifactError(_too_large(f"a table of {len(frame):,} rows (the limit is {MAX_TABLE_ROWS:,})"))
    index = frame.index
    default_index = isinstance(index, pandas.RangeIndex) and index.name is None and index.start == 0 and index.step == 1
    if not default_index:  # a meaningful index (dates, labels) is data: keep it as leading columns
        frame = frame.reset_index()
    names = [str(name) for name in frame.columns]
    if len(set(names)) != len(names):
        duplicated = sorted({name for name in names if names.count(name) > 1})
        raise ArtifactError(
            f"create_table_artifact() got a DataFrame with duplicate column names {duplicated}: rows would lose "
            "values. Fix: rename the columns, e.g. frame.columns = [...]."
        )
    return [dict(zip(names, values)) for values in frame.itertuples(index=False, name=None)]


def _column_rows(columns: Mapping[Any, Any]) -> list[Mapping[str, Any]]:
    lengths: dict[str, int] = {}
    for name, values in columns.items():
        if (
            isinstance(values, (str, bytes, Mapping))
            or not hasattr(values, "__len__")
            or not hasattr(values, "__iter__")
        ):
            raise ArtifactError(
                f"create_table_artifact() got a dict whose value for {name!r} is a {type(values).__name__}, not a "
                "column: a dict is read as columns, each a list of values. Fix: pass {'col': [v1, v2]}, or a list "
                "of dicts for rows, e.g. [{'col': v1}]."
            )
        lengths[str(name)] = len(values)
    if len(set(lengths.values())) > 1:
        shown = ", ".join(f"{name}={length}" for name, length in lengths.items())
        raise ArtifactError(
            f"create_table_artifact() got columns of different lengths ({shown}): every column needs one value "
            "per row. Fix: pad the short columns with None, or pass a list of dicts (rows)."
        )
    count = next(iter(lengths.values()), 0)
    if count > MAX_TABLE_ROWS:
        raise ArtifactError(_too_large(f"a table of {count:,} rows (the limit is {MAX_TABLE_ROWS:,})"))
    names = list(lengths)
    return [dict(zip(names, values)) for values in zip(*columns.values())]


_MISSING_TYPES = frozenset({"NaTType", "NAType"})  # pandas' missing markers, known by name so pandas stays unimported


def _json_safe(value: Any) -> Any:
    """``value`` as something ``json.dumps`` writes as strict JSON."""
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if type(value).__name__ in _MISSING_TYPES:  # before datetime: NaT is a datetime whose isoformat() is "NaT"
        return None
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(name): _json_safe(item) for name, item in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_json_safe(item) for item in value]
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        if isinstance(value, numpy.datetime64):
            # .item() of a nanosecond datetime64 is an int: go through microseconds for a datetime.
            return None if numpy.isnat(value) else _json_safe(value.astype("datetime64[us]").item())
        if isinstance(value, (numpy.generic, numpy.ndarray)):
            return _json_safe(value.tolist() if isinstance(value, numpy.ndarray) else value.item())
    return str(value)
