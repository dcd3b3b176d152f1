"""A serving worker ends when its supervisor dies (SIGKILL, the OOM killer): left running it
would keep serving an old start and hold the port, so a restart could not bind it.

``featurestore serve --workers N`` (N > 1) names its own process id in ``SUPERVISOR_ENV``; a
worker started under it sends itself SIGTERM once that process is gone, which drains it as any
SIGTERM does (see drain.Drain). On Linux the kernel sends it (``PR_SET_PDEATHSIG``); elsewhere
a thread polls the parent process id.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading

log = logging.getLogger("featurestore.serving")

SUPERVISOR_ENV = "FEATURESTORE_SERVE_SUPERVISOR"
_PR_SET_PDEATHSIG = 1  # from <sys/prctl.h>
_POLL_S = 0.5

_watching = False


def supervisor_pid() -> int | None:
    """The supervisor's process id when this process is one of its workers, else None."""
    value = os.environ.get(SUPERVISOR_ENV, "")
    if not value.isdigit() or int(value) == os.getpid():
        return None
    return int(value)


def watch_parent() -> None:
    """In a worker of a supervisor (see ``supervisor_pid``), arrange for SIGTERM to this
    process when the supervisor dies; elsewhere (one process serving, a test) do nothing."""
    global _watching
    parent = supervisor_pid()
    if parent is None or _watching:
        return
    _watching = True
    if _kernel_signals_on_parent_death():
        if os.getppid() != parent:  # it died before the kernel was asked: no signal comes
            _parent_gone(parent)
    else:
        threading.Thread(target=_poll, args=(parent,), name="parent-watch", daemon=True).start()


def _kernel_signals_on_parent_death() -> bool:
    """Linux: ask the kernel for SIGTERM when the parent ends. It is sent when the *thread*
    that started this process ends; uvicorn starts and restarts workers from its main thread,
    so that is the supervisor's end."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _poll(parent: int) -> None:
    """Wait until this process is handed to another parent (the supervisor ended)."""
    stop = threading.Event()
    while os.getppid() == parent:
        stop.wait(_POLL_S)
    _parent_gone(parent)


def _parent_gone(parent: int) -> None:
    log.warning("the serve supervisor (process %d) is gone; this worker stops", parent)
    os.kill(os.getpid(), signal.SIGTERM)
