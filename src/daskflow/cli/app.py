"""The ``daskflow`` command: the root click group, and the groups that join it.

``main`` is the console script (``daskflow = "daskflow.cli:main"``). Each
group of commands lives in its own module and is added here, so this is the
one place that lists them: ``cache`` (the result cache), ``runs`` (the run
history), ``artifacts`` (what runs published) and ``block`` (saved
configuration: secrets, storage, connections). A new group joins the same
way: a ``@click.group()`` in its module, and one ``main.add_command`` below.
"""

from __future__ import annotations

import click

from daskflow._version import __version__
from daskflow.cli.artifacts import artifacts
from daskflow.cli.blocks import block
from daskflow.cli.cache import cache
from daskflow.cli.deployments import deployment
from daskflow.cli.events import events
from daskflow.cli.pausing import runs_resume
from daskflow.cli.runs import runs
from daskflow.cli.serve import serve
from daskflow.cli.server import server
from daskflow.cli.variables import variable

__all__ = ["main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="daskflow", message="%(prog)s %(version)s")
def main() -> None:
    """daskflow: Prefect-style workflow orchestration on Dask.

    Housekeeping for what daskflow keeps: the result cache, and the history
    of runs with their logs and artifacts. Settings come from dask.config
    (keys daskflow.*, or DASK_DASKFLOW__... variables); files default to
    $DASKFLOW_HOME (~/.daskflow).
    """


main.add_command(cache)
main.add_command(runs)
main.add_command(artifacts)
main.add_command(deployment)
main.add_command(serve)
main.add_command(block)
main.add_command(server)
main.add_command(variable)
main.add_command(events)
runs.add_command(runs_resume)
