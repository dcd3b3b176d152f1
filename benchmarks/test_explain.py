"""What an explanation adds to a predict, against LightGBM's own tree SHAP on the same rows.

In process, from the embedded store (so the store's share is smallest): predict with and without
``explain`` for 1 and 100 entities, and the floor, ``Booster.predict(x, pred_contrib=True)`` on
the same input rows (one thread, as the served model runs), alternate in blocks. Ours is the
extra p50 of an explained predict over a plain one; the target: at most 1.2x the floor's p50,
i.e. the engine adds little to what the library itself spends on the contributions.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from benchmarks import _report
from benchmarks import _serving as sv
from benchmarks.conftest import EmbeddedServing
from benchmarks.loadgen import interleaved

TARGET = 1.2  # (explained p50 - plain p50) / floor p50


@pytest.mark.parametrize("entities", [1, 100])
def test_explain_cost_inprocess(
    benchmark: Any,
    request: pytest.FixtureRequest,
    embedded_serving: EmbeddedServing,
    entities: int,
) -> None:
    import lightgbm as lgb

    from featurestore.online.models.repo import model_registry
    from featurestore.online.serving.config import ServingConfig
    from featurestore.online.serving.engine import Engine

    store = embedded_serving.store
    ones = embedded_serving.entities
    batches = [
        {k: [e[k][0] for e in ones[i : i + entities]] for k in ones[0]}
        for i in range(0, len(ones) - entities + 1, entities)
    ]
    engine = Engine(store, serving=ServingConfig(deadline_ms=1000)).start(poll=False)
    try:
        chosen, _ = engine.models.select(sv.MODEL)
        booster = lgb.Booster(model_file=model_registry(store).artifact_path(chosen.version))
        names = list(chosen.feature_names)
        rows = []  # each batch's model input, as the engine builds it
        for b in batches:
            cols = engine.predict(sv.MODEL, entities=b, return_features=True).features.columns
            rows.append(np.array([cols[n] for n in names], dtype=np.float64).T.copy())
        res = engine.predict(sv.MODEL, entities=batches[0], explain=True)
        want = booster.predict(rows[0], pred_contrib=True, num_threads=1)
        assert not res.degraded and res.explanation is not None
        np.testing.assert_allclose(res.explanation.contributions, want[:, :-1], rtol=1e-9)

        def cycle(fn: Any, items: list[Any]) -> Any:
            state = {"i": 0}

            def call() -> Any:
                state["i"] = (state["i"] + 1) % len(items)
                return fn(items[state["i"]])

            return call

        calls = 3000 if entities == 1 else 60
        out = interleaved(
            {
                "plain": cycle(lambda b: engine.predict(sv.MODEL, entities=b), batches),
                "explained": cycle(
                    lambda b: engine.predict(sv.MODEL, entities=b, explain=True), batches
                ),
                "floor": cycle(
                    lambda x: booster.predict(x, pred_contrib=True, num_threads=1), rows
                ),
            },
            n=calls,
            blocks=10,
            max_seconds=60,
            warmup=5,
        )
        for v in out.values():
            assert not v.errors, v.first_error
        benchmark.pedantic(
            cycle(lambda b: engine.predict(sv.MODEL, entities=b, explain=True), batches),
            rounds=20,
            warmup_rounds=2,
        )
    finally:
        engine.close()
    plain, explained, floor = out["plain"], out["explained"], out["floor"]
    extra = explained.p50_us - plain.p50_us
    ratio = extra / floor.p50_us
    _report.record(
        benchmark,
        workload=f"predict in process with explain, {entities} entit{'y' if entities == 1 else 'ies'}"
        " x 40 features, LightGBM 100 trees, embedded store",
        ours=f"p50 {_report.fmt_us(explained.p50_us)} / p99 {_report.fmt_us(explained.p99_us)}"
        f" (without explain p50 {_report.fmt_us(plain.p50_us)}: +{_report.fmt_us(extra)})",
        floor=f"LightGBM pred_contrib on the same rows: p50 {_report.fmt_us(floor.p50_us)} / "
        f"p99 {_report.fmt_us(floor.p99_us)}",
        ratio=ratio,
        target=f"(explained - plain) p50 / floor p50 <= {TARGET}",
        met=ratio <= TARGET,
        nodeid=request.node.nodeid,
        explained_p50_us=explained.p50_us,
        plain_p50_us=plain.p50_us,
        floor_p50_us=floor.p50_us,
    )
