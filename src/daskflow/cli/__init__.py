"""The ``daskflow`` command line: housekeeping for what daskflow keeps, and its run history.

The CLI is a thin shell over the library's own APIs. Each command opens the
store the library itself would use (an option overrides it), reads or changes
it through that store's API, and reports what it found or did: a table in a
terminal, plain aligned text when piped, so that ``grep`` and ``awk`` work on
it, and JSON with ``--json`` where scripts want it.

* :mod:`.app` — ``main``, the root group, and the list of groups;
* :mod:`.cache` — ``daskflow cache ls | clear | prune``;
* :mod:`.runs` — ``daskflow runs ls | show | logs`` (``show``'s page: :mod:`.run_detail`);
* :mod:`.artifacts` — ``daskflow artifacts ls | show``;
* :mod:`.history` — the run store option, opening it, run ids and times;
* :mod:`.output` — errors, tables, times, durations and JSON, shared by all.

Exit codes: 0 done; 1 declined at a prompt, or files left that could not be
removed; 2 bad input or a store that cannot be opened or reached, reported as
one line that ends with the fix, never as a traceback. Only the console script
imports this package, so ``import daskflow`` never imports click or rich.
"""

from __future__ import annotations

from daskflow.cli.app import main

__all__ = ["main"]
