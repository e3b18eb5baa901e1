"""``daskflow.runtime``: facts about the run this code is part of, as module attributes (Prefect's ``prefect.runtime``).

Three modules answer at the moment an attribute is read, from the run context
of the calling thread, so they can be imported once at module level and read
anywhere, including on a Dask worker::

    from daskflow import runtime

    @task
    def report():
        return f"{runtime.flow_run.name} / {runtime.task_run.name} (attempt {runtime.task_run.run_count})"

* :mod:`.flow_run` — ``id``, ``name``, ``flow_name``, ``parameters``, ``tags``,
  ``scheduled_start_time``, ``run_count``, ``parent_flow_run_id``,
  ``parent_deployment_id``, ``root_flow_run_id``;
* :mod:`.task_run` — ``id``, ``name``, ``task_name``, ``parameters``, ``tags``, ``run_count``;
* :mod:`.deployment` — ``id``, ``name``, ``parameters``, ``flow_run_id``.

Outside a run the ids and names are None, the parameters ``{}``, the tags
``[]`` and the counts 0, as in Prefect; ``flow_run.scheduled_start_time`` is
then the current time, as in Prefect. An environment variable
``DASKFLOW__RUNTIME__<MODULE>__<ATTRIBUTE>`` (e.g.
``DASKFLOW__RUNTIME__FLOW_RUN__NAME``) overrides an attribute, for testing
code that reads them without running it.
"""

from __future__ import annotations

from daskflow.runtime import deployment, flow_run, task_run

__all__ = ["deployment", "flow_run", "task_run"]
