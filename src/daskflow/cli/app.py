"""The ``daskflow`` command: the root click group, and the groups that join it.

``main`` is the console script (``daskflow = "daskflow.cli:main"``). Each
group of commands lives in its own module and is added here, so this is the
one place that lists them: ``cache`` (the result cache), ``runs`` (the run
history), ``artifacts`` (what runs published) and ``block`` (saved
configuration: secrets, storage, connections). A new group joins the same
way: a ``@click.group()`` in its module, and one line in ``_COMMANDS`` below.

A group's module is imported when the group is asked for (a lazy
:class:`click.Group`), not when ``main`` is: ``daskflow server`` then does not
import SQLAlchemy queries, rich tables and cryptography for the commands it does
not run. That was about half a second of CPU for every ``daskflow`` process
(the server, ``serve``, a deployment's run). ``daskflow --help`` imports them all.
"""

from __future__ import annotations

import importlib

import click

from daskflow._version import __version__

__all__ = ["main"]

# Each command of `daskflow`: the module and the name of its click group or command, and the
# commands another module adds to it (`runs resume` lives with the pausing commands).
_COMMANDS: dict[str, tuple[str, str, tuple[tuple[str, str], ...]]] = {
    "artifacts": ("daskflow.cli.artifacts", "artifacts", ()),
    "block": ("daskflow.cli.blocks", "block", ()),
    "cache": ("daskflow.cli.cache", "cache", ()),
    "deployment": ("daskflow.cli.deployments", "deployment", ()),
    "events": ("daskflow.cli.events", "events", ()),
    "runs": ("daskflow.cli.runs", "runs", (("daskflow.cli.pausing", "runs_resume"),)),
    "serve": ("daskflow.cli.serve", "serve", ()),
    "server": ("daskflow.cli.server", "server", ()),
    "variable": ("daskflow.cli.variables", "variable", ()),
}


def _attribute(module: str, name: str) -> click.Command:
    command = getattr(importlib.import_module(module), name)
    if not isinstance(command, click.Command):
        raise TypeError(f"daskflow's command table names {module}.{name}, which is not a click command")
    return command


class _LazyGroup(click.Group):
    """A group that imports a command's module the first time the command is asked for."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *_COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in _COMMANDS and cmd_name not in self.commands:
            module, name, extras = _COMMANDS[cmd_name]
            command = _attribute(module, name)
            for extra_module, extra_name in extras:
                if not isinstance(command, click.Group):
                    raise TypeError(f"{module}.{name} is given subcommands in daskflow's command table: not a group")
                command.add_command(_attribute(extra_module, extra_name))
            self.add_command(command, cmd_name)
        return super().get_command(ctx, cmd_name)


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="daskflow", message="%(prog)s %(version)s")
def main() -> None:
    """daskflow: Prefect-style workflow orchestration on Dask.

    Housekeeping for what daskflow keeps: the result cache, and the history
    of runs with their logs and artifacts. Settings come from dask.config
    (keys daskflow.*, or DASK_DASKFLOW__... variables); files default to
    $DASKFLOW_HOME (~/.daskflow).
    """
