"""A clock for tests of schedules: time jumps to whatever moment is waited for.

A served schedule asks its clock for ``now()`` and waits with
``wait_until(moment, stop)``; this clock moves to the moment at once, so a test
sees a day of cron times fire in milliseconds, in their order, with no sleep.
One clock may be shared by the threads serving several schedules.
"""

from __future__ import annotations

import threading
from datetime import datetime

__all__ = ["JumpingClock"]


class JumpingClock:
    """Time that jumps to whatever is waited for (shared by the threads serving several schedules)."""

    def __init__(self, start: datetime) -> None:
        self.current = start
        self.lock = threading.Lock()

    def now(self) -> datetime:
        with self.lock:
            return self.current

    def wait_until(self, moment: datetime, stop: threading.Event) -> bool:
        with self.lock:
            if not stop.is_set() and moment > self.current:
                self.current = moment
        return stop.is_set()
