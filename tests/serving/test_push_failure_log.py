"""A store outage fails every push: the log gets one line per 10 s, the next saying how many
were left out (each failed push is still counted in the metrics), not one line per push."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from featurestore.errors import OnlineStoreError
from featurestore.online.serving import _push
from featurestore.online.serving.engine import Engine
from tests.conftest import start_redis
from tests.serving.conftest import make_repo

ROW = {"user_id": [7], "tx_count": [3], "amount_mean": [2.5], "country": ["fr"]}


def test_failed_pushes_log_one_line_per_period(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_push, "_FAILURES", _push.ThrottledLog(3600.0))
    server = start_redis(tmp_path / "redis")
    repo = make_repo(tmp_path / "repo", online="redis", redis_url=server.url)
    e = Engine.from_repo(str(repo)).start(poll=False)
    try:
        assert e.push("user_stats", ROW) == 1
        server.stop()  # the outage
        caplog.set_level(logging.ERROR, logger="featurestore.serving")
        for _ in range(20):
            with pytest.raises(OnlineStoreError):
                e.push("user_stats", ROW)
        lines = [r.getMessage() for r in caplog.records if "failed" in r.getMessage()]
        assert len(lines) == 1 and lines[0].startswith("push (to=online) failed: ")
        _push._FAILURES._next.clear()  # the period is over: the next line counts the rest
        with pytest.raises(OnlineStoreError):
            e.push("user_stats", ROW)
        lines = [r.getMessage() for r in caplog.records if "failed" in r.getMessage()]
        assert len(lines) == 2
        assert lines[1].endswith("(and 19 more like it in the last 3600 s, not logged)")
    finally:
        e.close()
        server.stop()
