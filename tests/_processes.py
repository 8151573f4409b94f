"""Process inspection for the tests that stop a sweep's driver and check that no work outlives it (Linux
``/proc``; those tests skip elsewhere)."""

from __future__ import annotations

import os
import signal
import time
from typing import Callable, Optional


def stat(pid: int) -> Optional[tuple[str, int]]:
    """``(state, parent pid)`` of a process, or ``None`` when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return fields[0], int(fields[1])


def alive(pid: int) -> bool:
    st = stat(pid)
    return st is not None and st[0] not in ("Z", "X")  # a zombie has exited


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def wait(cond: Callable[[], bool], timeout: float, step: float = 0.05) -> bool:
    """Poll ``cond`` until it holds or ``timeout`` seconds pass; its last value."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(step)
    return cond()


def default_sigint() -> None:
    """``preexec_fn`` of a driver the tests stop with Ctrl-C: SIGINT back to its default. A shell's background
    job (``cmd &`` without job control, as CI scripts start things) ignores SIGINT, children inherit that, and
    Python then installs no KeyboardInterrupt handler: the driver would never see the test's Ctrl-C."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def reap(proc, pids) -> None:
    """Test cleanup: end what a test started (by pid) if the code under test left it running."""
    for pid in [proc.pid, *pids]:
        if alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    proc.wait()
