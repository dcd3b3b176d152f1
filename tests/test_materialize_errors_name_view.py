"""A materialize whose online store stops answering says which view it was writing, as the
full and the incremental run alike (the incremental one used to print the store error alone),
and keeps the error's class (unavailable: retry later)."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pytest

from featurestore import FeatureStore
from featurestore.errors import OnlineStoreUnavailableError
from tests.conftest import start_redis
from tests.serving.conftest import make_repo


@pytest.mark.parametrize("incremental", [True, False])
def test_a_store_that_stops_answering_is_named_with_the_view(
    tmp_path: Path, incremental: bool
) -> None:
    server = start_redis(tmp_path / "redis")
    repo = make_repo(tmp_path / "repo", online="redis", redis_url=server.url)
    server.stop()
    now = datetime.now(timezone.utc)
    with FeatureStore(repo) as store:
        with pytest.raises(OnlineStoreUnavailableError) as info:
            if incremental:
                store.materialize_incremental(now)
            else:
                store.materialize(datetime(2020, 1, 1, tzinfo=timezone.utc), now)
    msg = str(info.value)
    assert msg.startswith("materialize 'user_stats': ") or msg.startswith(
        "materialize 'merchant_stats': "
    ), msg
    assert msg.count("materialize '") == 1
