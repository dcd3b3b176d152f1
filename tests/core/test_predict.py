"""``store.predict`` in process: lookup -> model, the same answer the features give by hand."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa
import pytest

from featurestore import FeatureStore
from featurestore.errors import EntityDataError

from .conftest import write_users

MODEL = """
import numpy as np
FEATURE_NAMES = ["clicks", "spend"]

def predict(X):
    return X[:, 0] * 1000.0 + X[:, 1]
"""


def test_predict_scores_what_the_online_features_say(make_repo, tmp_path) -> None:
    from tests._models import publish

    repo = make_repo()
    # fresh rows: predict judges the ttl (1 day) at the wall clock
    t0 = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(hours=20)
    write_users(repo / "data" / "users.parquet", t0=t0)
    (tmp_path / "model.py").write_text(MODEL)
    with FeatureStore(repo) as store:
        store.apply()
        store.materialize(t0, t0 + timedelta(days=1))
        publish(store, "toy", flavor="python", artifact=tmp_path / "model.py", service="svc")
        feats = store.get_online_features("svc", {"user_id": [1, 3, 99]}).to_dict()
        res = store.predict(
            "toy@production", {"user_id": [1, 3, 99]}, return_features=True, deadline_ms=5_000
        )
        # the same entities as a numpy column, a polars, pandas or Arrow frame, a row list
        frames = [
            {"user_id": np.array([1, 3, 99])},
            pl.DataFrame({"user_id": [1, 3, 99]}),
            pd.DataFrame({"user_id": [1, 3, 99]}),
            pa.table({"user_id": [1, 3, 99]}),
            [{"user_id": 1}, {"user_id": 3}, {"user_id": 99}],
        ]
        for rows in frames:
            assert store.get_online_features("svc", rows).to_dict() == feats
            np.testing.assert_array_equal(
                store.predict("toy", rows, deadline_ms=5_000).scores, res.scores
            )
        with pytest.raises(EntityDataError, match=r"entity column 'user_id' must hold one value"):
            store.predict("toy", {"user_id": 1})
        with pytest.raises(EntityDataError, match=r"entity rows must be a dict of columns"):
            store.get_online_features("svc", 1)
    assert not res.degraded
    expected = [
        c * 1000.0 + (s if s is not None else 0.0)
        for c, s in zip(feats["clicks"], feats["spend"], strict=True)
    ]
    # user 99 has no row: its clicks default (0) feeds the model
    assert feats["clicks"][2] == 0
    assert feats["clicks"][:2] == [16, 18]  # the latest rows of users 1 and 3
    assert list(res.scores)[:2] == pytest.approx(expected[:2])


def test_predict_unknown_model_names_it(make_repo) -> None:
    from featurestore.online.models.errors import ModelRegistryError

    with FeatureStore(make_repo()) as store:
        store.apply()
        with pytest.raises(ModelRegistryError, match="nope"):
            store.predict("nope", {"user_id": [1]})
