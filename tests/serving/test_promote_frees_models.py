"""A promoted-away model version is freed: serving keeps no copy of old versions alive (the
one-entity predict shortcut used to hold every version it had served, up to 65 copies)."""

from __future__ import annotations

import gc
import weakref
from pathlib import Path

from featurestore.online.models.repo import model_registry
from featurestore.online.models.runtime import LoadedModel
from featurestore.online.serving.engine import Engine

ONE = {"user_id": [1], "merchant_id": [1]}


def _live_models() -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if type(o) is LoadedModel)


def test_promotes_back_and_forth_keep_no_old_copies(fresh_repo: Path) -> None:
    e = Engine.from_repo(str(fresh_repo)).start(poll=False)
    try:
        reg = model_registry(e.store)
        first = e.predict("fraud", entities=ONE)  # v1 through the one-entity shortcut
        assert first.version == 1
        gone = weakref.ref(e.models.routes["fraud"].production)
        base = _live_models()
        for i in range(12):
            v = 2 if i % 2 == 0 else 1
            reg.set_alias("fraud", v, "production")
            assert e.models.refresh()
            assert e.predict("fraud", entities=ONE).version == v  # the shortcut, each version
            e.predict("fraud", entities={"user_id": [1, 2], "merchant_id": [1, 2]})
        assert gone() is None  # the first v1 object: freed once promoted away
        # one loaded copy of the current production, not one per promote
        assert _live_models() <= base
        assert len(e._vectors) <= 2
    finally:
        e.close()
