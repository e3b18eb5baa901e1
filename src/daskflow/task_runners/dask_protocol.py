"""What the Dask runner's client sends to a worker with each task: one typed message.

Client -> worker. Each Dask task that daskflow submits is
``run_on_worker(task, flow_info, spec, upstream)``: ``task`` and ``flow_info``
are shared by every task of a submission (inline, or one shared task when
that is cheaper), ``upstream`` is the list of upstream states Dask resolved
on the cluster, and ``spec`` is a :class:`RunSpec`: the run to rebuild there.

========== ===================================================================
field      meaning
========== ===================================================================
run_id     the task run's id (the client's record has the same id)
name       the run's name, e.g. ``extract-3``
map_index  its index in its ``.map``, or None
upstreams  ids of the task runs it takes values from (for the record)
parameters its arguments, with ``UpstreamRef``/``ItemRef`` where an upstream
           run's state (or an item of its value) goes: index into ``upstream``
wait_for   the same for ``wait_for``
attempts   attempts the run made before this Dask task
crash      why the last of those attempts ended with its process (a worker
           died under it), or None: the worker's engine judges it first
========== ===================================================================

A :class:`RunSpec` pickles as a flat tuple headed by :data:`VERSION`
(:meth:`RunSpec.__reduce__` and :func:`_decode` side by side), so a worker
running another daskflow version refuses it with a clear error instead of
misreading a field. The worker -> client direction (state, log, artifact and
sync events on the ``daskflow`` topic) is described in :mod:`.dask_worker`.
"""

from __future__ import annotations

from typing import Any

from daskflow.exceptions import ConfigurationError

__all__ = ["VERSION", "RunSpec"]

VERSION = 1


class RunSpec:
    """One task run as the client sends it to a worker (see the module docstring)."""

    __slots__ = ("run_id", "name", "map_index", "upstreams", "parameters", "wait_for", "attempts", "crash")

    def __init__(
        self,
        run_id: str,
        name: str,
        map_index: int | None,
        upstreams: tuple[str, ...],
        parameters: dict[str, Any],
        wait_for: tuple[Any, ...],
        attempts: int,
        crash: str | None,
    ) -> None:
        self.run_id = run_id
        self.name = name
        self.map_index = map_index
        self.upstreams = upstreams
        self.parameters = parameters
        self.wait_for = wait_for
        self.attempts = attempts
        self.crash = crash

    def __reduce__(self) -> tuple[Any, ...]:
        return (_decode, (VERSION, self.run_id, self.name, self.map_index, self.upstreams, self.parameters,
                          self.wait_for, self.attempts, self.crash))  # fmt: skip


def _decode(version: int, *fields: Any) -> RunSpec:
    if version != VERSION:
        raise ConfigurationError(
            f"a daskflow task spec of protocol version {version} reached a worker that speaks version {VERSION}: "
            "the client and the Dask workers run different daskflow versions; install the same version on both"
        )
    return RunSpec(*fields)
