"""`featurestore serve` empties a PROMETHEUS_MULTIPROC_DIR the user set of an earlier run's
files before any worker starts, and with REST port 0 prints the port it really listens on."""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx

from featurestore._cli_serve import wipe_metrics_dir
from tests.serving.conftest import make_repo

# a process of an earlier run that counted 1000 answered predictions, as a worker does
_EARLIER_RUN = """
from prometheus_client import CollectorRegistry, Counter
c = Counter("featurestore_requests_total", "Requests", ["endpoint", "outcome"],
            registry=CollectorRegistry())
c.labels("predict", "ok").inc(1000)
"""

# one of each kind of file prometheus_client writes in multiprocess mode
_EVERY_TYPE = """
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Summary
r = CollectorRegistry()
Counter("c", "c", registry=r).inc()
Histogram("h", "h", registry=r).observe(1)
Summary("s", "s", registry=r).observe(1)
for mode in ("all", "livemax", "mostrecent"):
    Gauge("g_" + mode, "g", multiprocess_mode=mode, registry=r).set(1)
"""


def test_wipe_removes_only_the_db_files(tmp_path: Path) -> None:
    folder = tmp_path / "metrics"
    folder.mkdir()
    for name in ("counter_11.db", "histogram_11.db", "gauge_livesum_12.db"):
        (folder / name).write_bytes(b"\0" * 16)
    (folder / "README.txt").write_text("not prometheus's")
    (folder / "sub.db").mkdir()  # a folder, even one named *.db, is left alone
    assert wipe_metrics_dir(folder) == 3
    assert sorted(p.name for p in folder.iterdir()) == ["README.txt", "sub.db"]
    assert wipe_metrics_dir(folder) == 0


def test_wipe_leaves_other_programs_db_files_in_a_shared_folder(tmp_path: Path) -> None:
    """PROMETHEUS_MULTIPROC_DIR pointed at a folder shared with other programs: only the files
    prometheus_client names ``<type>_<process>.db`` go, every gauge mode's among them."""
    folder = tmp_path / "shared"
    folder.mkdir()
    ours = [
        "counter_11.db", "histogram_11.db", "summary_11.db", "gauge_all_11.db",
        "gauge_liveall_11.db", "gauge_min_11.db", "gauge_livemin_11.db", "gauge_max_11.db",
        "gauge_livemax_11.db", "gauge_sum_11.db", "gauge_livesum_11.db",
        "gauge_mostrecent_11.db", "gauge_livemostrecent_11.db", "counter_worker-a.db",
    ]  # fmt: skip
    theirs = [
        "app.db", "counter.db", "counters_11.db", "gauge_11.db", "gauge_other_11.db",
        "histogram_11.db.bak", "my_counter_11.db", "summary_11.sqlite",
    ]  # fmt: skip
    for name in ours + theirs[1:]:
        (folder / name).write_bytes(b"\0" * 16)
    with sqlite3.connect(folder / "app.db") as db:  # another program's SQLite file
        db.execute("create table t (x)")
    assert wipe_metrics_dir(folder) == len(ours)
    assert sorted(p.name for p in folder.iterdir()) == sorted(theirs)
    with sqlite3.connect(folder / "app.db") as db:
        assert db.execute("select count(*) from t").fetchone() == (0,)


def test_wipe_removes_what_prometheus_client_writes(tmp_path: Path) -> None:
    """The names checked against prometheus_client itself: a process of an earlier run with a
    counter, a histogram, a summary and gauges of several modes leaves files that all go."""
    folder = tmp_path / "metrics"
    folder.mkdir()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(folder)}
    subprocess.run([sys.executable, "-c", _EVERY_TYPE], env=env, check=True, timeout=60)
    written = sorted(p.name for p in folder.iterdir())
    assert len(written) == 6, written
    (folder / "app.db").write_bytes(b"not prometheus's")
    assert wipe_metrics_dir(folder) == 6
    assert [p.name for p in folder.iterdir()] == ["app.db"]


def test_wipe_makes_a_missing_folder(tmp_path: Path) -> None:
    folder = tmp_path / "a" / "b"
    assert wipe_metrics_dir(folder) == 0
    assert folder.is_dir()


def test_a_restarted_server_counts_from_zero_and_prints_its_real_port(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", serving="serving:\n  rest_port: 0\n  grpc_port: 0\n")
    metrics = tmp_path / "metrics"
    metrics.mkdir()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(metrics), "PYTHONUNBUFFERED": "1"}
    subprocess.run([sys.executable, "-c", _EARLIER_RUN], env=env, check=True, timeout=60)
    stale = sorted(p.name for p in metrics.glob("*.db"))
    assert stale, "the earlier run left no metrics file"
    proc = subprocess.Popen(
        [sys.executable, "-m", "featurestore.cli", "-r", str(repo), "serve"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
    )
    try:
        assert proc.stdout is not None
        head = [proc.stdout.readline().decode() for _ in range(2)]
        found = re.search(r"REST on http://127\.0\.0\.1:(\d+), 1 worker", head[0])
        assert found, head
        port = int(found.group(1))
        assert port != 0
        assert head[1].startswith(f"removed {len(stale)} metrics file(s) of a previous run")
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        body = {"model": "fraud", "entities": {"user_id": [1], "merchant_id": [1]}}
        answered = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                answered = httpx.post(f"{url}/predict", json=body, timeout=5)
                if answered.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        assert answered is not None and answered.status_code == 200
        text = httpx.get(f"{url}/metrics", timeout=5).text
        ok = [
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith('featurestore_requests_total{endpoint="predict",outcome="ok"}')
        ]
        assert ok == [1.0], text
        assert not set(stale) & {p.name for p in metrics.glob("*.db")}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
