"""Prefect's ``prefect.flow_runs`` path: pausing and resuming flow runs (see :mod:`daskflow.pausing`)."""

from __future__ import annotations

from daskflow.pausing import PausedRunTimeoutError, PauseError, pause_flow_run, resume_flow_run, suspend_flow_run

__all__ = ["PauseError", "PausedRunTimeoutError", "pause_flow_run", "resume_flow_run", "suspend_flow_run"]
