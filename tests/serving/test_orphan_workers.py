"""``featurestore serve --workers 2`` whose supervisor is SIGKILLed (the OOM killer, kill -9):
its workers end too (see parent_watch), freeing the ports for a restart."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from featurestore.online.serving.parent_watch import SUPERVISOR_ENV, supervisor_pid
from tests.serving.conftest import cli_serve, free_port

_WORKER = re.compile(rb"Started server process \[(\d+)\]")
_TIMEOUT_S = 90.0  # generous: a slow machine starts two workers and drains them


def _wait_for(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + _TIMEOUT_S
    while not check():
        assert time.monotonic() < deadline, f"{what}: not within {_TIMEOUT_S} s"
        time.sleep(0.1)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a process id reused by another user's process
        return True
    return True


def _ready(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/health/ready", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _listenable(port: int) -> bool:
    """Whether a server could listen on ``port`` (bound as the servers bind it)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
            sock.listen()
        except OSError:
            return False
    return True


def test_workers_end_when_the_supervisor_is_killed(fresh_repo: Path) -> None:
    rest, grpc_port = free_port(), free_port()
    args = ("--port", str(rest), "--grpc-port", str(grpc_port), "--workers", "2")
    with cli_serve(fresh_repo, *args, "--log-level", "info") as proc:
        output = bytearray()

        def collect() -> None:  # until every holder of the pipe (workers too) has ended
            assert proc.stdout is not None
            while chunk := proc.stdout.read1():
                output.extend(chunk)

        reader = threading.Thread(target=collect, daemon=True)
        reader.start()

        def workers() -> set[int]:
            return {int(m) for m in _WORKER.findall(bytes(output))} - {proc.pid}

        _wait_for(lambda: len(workers()) == 2 and _ready(rest), "two ready workers")
        pids = workers()
        assert all(map(_alive, pids))
        try:
            proc.kill()
            proc.wait()
            _wait_for(lambda: not any(map(_alive, pids)), f"workers {sorted(pids)} ending")
            _wait_for(lambda: _listenable(rest) and _listenable(grpc_port), "the ports freed")
            reader.join(timeout=_TIMEOUT_S)
            assert output.count(b"Finished server process") == 2, output.decode()  # drained
        finally:  # orphans left by a failure
            for pid in filter(_alive, pids):
                os.kill(pid, signal.SIGKILL)

    with cli_serve(fresh_repo, *args) as again:  # a restart on the same ports
        _wait_for(lambda: again.poll() is None and _ready(rest), "the restarted server")


# a worker whose supervisor died before the worker arranged to follow it: it stops at once
_LATE_WORKER = """
import os, signal, sys, time
from featurestore.online.serving.parent_watch import SUPERVISOR_ENV, watch_parent
got = []
signal.signal(signal.SIGTERM, lambda *_: got.append(1))
while os.getppid() == int(os.environ[SUPERVISOR_ENV]):
    time.sleep(0.01)
watch_parent()
deadline = time.monotonic() + 30
while not got and time.monotonic() < deadline:
    time.sleep(0.01)
print("SIGTERM" if got else "no signal", flush=True)
"""
_SUPERVISOR = """
import os, subprocess, sys
env = dict(os.environ, FEATURESTORE_SERVE_SUPERVISOR=str(os.getpid()))
subprocess.Popen([sys.executable, "-c", sys.argv[1]], env=env)
"""


def test_a_worker_whose_supervisor_died_before_its_start_stops() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _SUPERVISOR, _LATE_WORKER],
        capture_output=True,  # read until the worker, holding the pipe too, has ended
        timeout=_TIMEOUT_S,
    )
    assert done.stdout.decode().strip() == "SIGTERM", done.stderr.decode()


def test_only_a_worker_of_a_supervisor_follows_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SUPERVISOR_ENV, raising=False)
    assert supervisor_pid() is None  # not started by `serve --workers N`
    monkeypatch.setenv(SUPERVISOR_ENV, str(os.getpid()))
    assert supervisor_pid() is None  # the supervisor itself (or one process serving)
    monkeypatch.setenv(SUPERVISOR_ENV, str(os.getppid()))
    assert supervisor_pid() == os.getppid()
