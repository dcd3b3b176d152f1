"""Apply after the first: transforms known to compile are not loaded (no numba in the process),
yet an edit that breaks one still fails apply with numba's one-line reason, and the lazily
loaded kernels compute what they computed before."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from featurestore.errors import DefinitionError

from .test_windows_apply import VIEW, line_of, make_repo

ODFV = """
req = RequestSource("req", schema=[Field("amount", Float64)])


@on_demand_feature(inputs=["amount", "tx:b_sum_1h"], output=Field("share", Float64),
                   sources=[req])
def share(amount: float, total: float) -> float:
    {body}


odfv = OnDemandFeatureView(name="odfv", sources=[req, tx], features=[share])
"""
DERIVED = """
@transform
def double(amount: float) -> float:
    {body}

"""
GOOD_DERIVED, GOOD_SHARE = "return amount * 2.0", "return amount / total if total else 0.0"
APPLY = textwrap.dedent("""
    import json, sys
    from featurestore import FeatureStore
    store = FeatureStore(sys.argv[1])
    store.apply()
    at_apply = "numba" in sys.modules
    view = store.registry.feature_view("tx")
    odfv = store.registry.on_demand_views["odfv"]
    out = {"numba_at_apply": at_apply,
           "double": view.window.derived[0][1](1.5),
           "share": odfv.feature("share").compute_row({"amount": 1.0, "tx:b_sum_1h": 4.0})}
    store.close()
    print(json.dumps(out))
""")


def _body(derived: str = GOOD_DERIVED, share: str = GOOD_SHARE) -> str:
    view = VIEW.format(body='derived={"b": (double, ["amount"])}, '
                       'aggregations=[Aggregation("b", "sum", "1h")]')  # fmt: skip
    return DERIVED.format(body=derived) + view + ODFV.format(body=share)


def _apply_in_new_process(repo: Path) -> dict[str, object]:
    out = subprocess.run([sys.executable, "-c", APPLY, str(repo)], capture_output=True,
                         text=True, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_second_apply_loads_no_numba_and_kernels_load_on_use(tmp_path: Path) -> None:
    make_repo(tmp_path, _body()).close()
    first, second = _apply_in_new_process(tmp_path), _apply_in_new_process(tmp_path)
    assert first["numba_at_apply"] is True  # compiled (and recorded) once
    assert second["numba_at_apply"] is False
    assert first["double"] == second["double"] == 3.0
    assert first["share"] == second["share"] == 0.25


@pytest.mark.parametrize(
    ("derived", "share", "needle", "name"),
    [
        ('return amount + "text"', GOOD_SHARE, '"text"', "double"),
        (GOOD_DERIVED, 'return amount + "text"', '"text"', "share"),
    ],
)
def test_an_edit_that_breaks_a_recorded_function_still_fails_apply(
    tmp_path: Path, derived: str, share: str, needle: str, name: str
) -> None:
    with make_repo(tmp_path, _body()) as store:
        store.apply()  # compiles and records both functions
    with make_repo(tmp_path, _body(derived, share)) as store, pytest.raises(DefinitionError) as e:
        store.apply()
    msg = str(e.value)
    assert "\n" not in msg, msg
    assert f"'{name}'" in msg and "does not compile with numba" in msg, msg
    assert f"definitions.py:{line_of(tmp_path, needle)}" in msg, msg
