"""/metrics reports what the server serves: registry version, watermarks, model versions."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from featurestore.online.models.repo import model_registry
from featurestore.online.serving.engine import Engine


def _gauges(engine: Engine) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    text = engine.metrics.render()[0].decode()
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for fam in text_string_to_metric_families(text):
        for sample in fam.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def test_registry_version_watermarks_and_model_aliases(fresh_repo: Path) -> None:
    e = Engine.from_repo(str(fresh_repo)).start(poll=False)
    try:
        state = e.store.registry
        g = _gauges(e)
        assert g["featurestore_registry_version"] == {(): float(state.version)}
        online = {n for n, v in state.feature_views.items() if v.online}
        want = {
            (("view", n),): state.materialization[n]["watermark_us"] / 1e6
            for n in online
            if n in state.materialization
        }
        assert want and g["featurestore_materialization_watermark_timestamp_seconds"] == want
        assert g["featurestore_model_version"] == {
            (("alias", "production"), ("model", "fraud")): 1.0
        }

        # a later materialization moves the gauge at the next scrape
        later = datetime.now(timezone.utc)  # after the repo's own run (an end past now is now)
        assert all(later.timestamp() > v for v in want.values())
        e.store.materialize(later - timedelta(days=1), later)
        marks = _gauges(e)["featurestore_materialization_watermark_timestamp_seconds"]
        assert set(marks.values()) == {int(later.timestamp() * 1e6) / 1e6}

        # promotion, canary and shadow show once the runtime swapped them in
        reg = model_registry(e.store)
        reg.set_alias("fraud", 2, "production")
        reg.set_alias("fraud", 1, "canary", share=0.1)
        reg.set_alias("fraud", 1, "shadow")
        assert e.models.refresh()
        assert _gauges(e)["featurestore_model_version"] == {
            (("alias", "production"), ("model", "fraud")): 2.0,
            (("alias", "canary"), ("model", "fraud")): 1.0,
            (("alias", "shadow"), ("model", "fraud")): 1.0,
        }
    finally:
        e.close()


def test_an_unreadable_registry_costs_only_these_gauges(
    fresh_repo: Path, monkeypatch, caplog
) -> None:
    e = Engine.from_repo(str(fresh_repo)).start(poll=False)
    try:
        e.predict("fraud", entities={"user_id": [1], "merchant_id": [1]})

        def broken() -> None:
            raise OSError("registry file gone")

        monkeypatch.setattr(e, "_registry", broken)
        caplog.set_level(logging.WARNING, logger="featurestore.online.serving.metrics")
        for _ in range(3):
            g = _gauges(e)
            assert "featurestore_registry_version" not in g
            assert "featurestore_materialization_watermark_timestamp_seconds" not in g
            ok = g["featurestore_requests_total"][(("endpoint", "predict"), ("outcome", "ok"))]
            assert ok == 1.0
        said = [r.getMessage() for r in caplog.records if "served-state" in r.getMessage()]
        assert len(said) == 1 and "registry file gone" in said[0]  # once, not every scrape
    finally:
        e.close()


def test_warm_up_lookups_are_not_counted_as_requests(fresh_repo: Path) -> None:
    e = Engine.from_repo(str(fresh_repo)).start(poll=False)
    try:
        g = _gauges(e)
        assert not g.get("featurestore_requests_total")
        assert g["featurestore_entities_total"] == {(): 0.0}
        e.get_features(feature_service="scoring", entities={"user_id": [1], "merchant_id": [1]})
        g = _gauges(e)
        ok = (("endpoint", "get_features"), ("outcome", "ok"))
        assert {k: v for k, v in g["featurestore_requests_total"].items() if v} == {ok: 1.0}
        assert g["featurestore_entities_total"] == {(): 1.0}
    finally:
        e.close()


def test_stream_fed_views_have_no_watermark_gauge(tmp_path: Path, redis_url: str) -> None:
    from featurestore import FeatureStore
    from tests.stream.conftest import small_repo

    repo = small_repo(tmp_path / "repo", redis_url, project="gauges")  # two stream-fed views
    with FeatureStore(repo) as store:
        store.apply()
    e = Engine.from_repo(str(repo)).start(poll=False)
    try:
        e.store.materialize(datetime(2000, 1, 1, tzinfo=timezone.utc), datetime.now(timezone.utc))
        assert set(e.store.registry.materialization) == {"tx", "profile"}
        g = _gauges(e)
        assert not g.get("featurestore_materialization_watermark_timestamp_seconds")
        assert g["featurestore_registry_version"] == {(): 1.0}
    finally:
        e.close()
