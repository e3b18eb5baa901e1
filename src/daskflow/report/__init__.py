"""The run report: one self-contained HTML page per flow run, made from the run store alone.

``render_report(store, flow_run_id)`` returns the page, ``write_report(store,
flow_run_id, path)`` writes it atomically (``daskflow runs report ID -o
FILE.html``). The page shows the run's final state, parameters and counts,
what failed where and after how many retries, the task graph with maps
grouped into one node, a timeline per worker, every task run, the logs and
the artifacts. How it is made: :mod:`.model` reads and groups, :mod:`.layout`
places, :mod:`.svg` draws, :mod:`.sections` and :mod:`.artifact_html` write
the text, :mod:`.page` assembles and writes the file.
"""

from __future__ import annotations

from daskflow.report.page import default_report_path, render_report, write_report

__all__ = ["default_report_path", "render_report", "write_report"]
