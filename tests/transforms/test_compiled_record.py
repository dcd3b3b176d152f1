"""``RowTransform.check`` (apply's check): the first check compiles and records it; a later
check of the same code trusts the record without loading numba, and any edit that could change
whether the function compiles (its body, a constant it reads, numba settings) compiles again."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from featurestore.errors import DefinitionError
from featurestore.transforms import _compiled_record, load_module_from_path, transform

CHECK = textwrap.dedent("""
    import json, sys
    from featurestore.transforms import load_module_from_path, transform
    t = transform(load_module_from_path(sys.argv[1]).score).check()
    loaded = "numba" in sys.modules
    print(json.dumps({"numba_at_check": loaded, "compiled": t.compiled, "value": t(2.0, 3)}))
""")


def _check_in_new_process(defs: Path) -> dict[str, object]:
    out = subprocess.run([sys.executable, "-c", CHECK, str(defs)], capture_output=True,
                         text=True, timeout=180)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _load(path: Path, text: str, name: str = "score") -> object:
    path.write_text(textwrap.dedent(text))
    return transform(getattr(load_module_from_path(str(path)), name))


def test_second_check_trusts_the_record_without_numba_and_loads_on_first_call(tmp_path):
    defs = tmp_path / "rec_defs.py"
    defs.write_text("def score(x: float, n: int) -> float:\n    return x * n + 1.0\n")
    first, second = _check_in_new_process(defs), _check_in_new_process(defs)
    assert first["numba_at_check"] is True and first["compiled"] is True
    assert second["numba_at_check"] is False and second["compiled"] is False
    assert first["value"] == second["value"] == 7.0  # the lazily loaded kernel answers alike
    assert len(list((tmp_path / "__pycache__").glob("rec_defs.score.fscompiled"))) == 1


def test_a_broken_edit_after_a_recorded_check_still_fails_with_numbas_reason(tmp_path):
    defs = tmp_path / "edit_defs.py"
    good = "def score(x: float) -> float:\n    return x + 1.0\n"
    assert _load(defs, good).check().compiled is True  # compiled and recorded
    assert _load(defs, good).check().compiled is False  # trusted: nothing loaded
    broken = _load(defs, 'def score(x: float) -> float:\n    return x + "text"\n')
    with pytest.raises(DefinitionError, match=r"'score' .*edit_defs.py:\d+\) does not compile"):
        broken.check()


def test_a_constant_the_function_reads_is_part_of_the_record(tmp_path):
    defs = tmp_path / "const_defs.py"
    body = "K = {k}\n\ndef score(x: float) -> float:\n    return x * K\n"
    _load(defs, body.format(k="2.0")).check()
    with pytest.raises(DefinitionError, match=r"does not compile with numba"):
        _load(defs, body.format(k='"two"')).check()


def test_an_edited_helper_module_compiles_again(tmp_path, monkeypatch):
    helper = tmp_path / "rec_helper.py"
    defs = tmp_path / "helper_defs.py"
    text = "import rec_helper\n\ndef score(x: float) -> float:\n    return rec_helper.f(x)\n"
    helper.write_text("import numba\n\n@numba.njit\ndef f(x):\n    return x * 2.0\n")
    assert _load(defs, text).check()(1.5) == 3.0
    helper.write_text('import numba\n\n@numba.njit\ndef f(x):\n    return x + "text"\n')
    monkeypatch.delitem(sys.modules, "rec_helper")  # the edited helper is imported anew
    # only the helper changed: numba's disk cache, keyed on the definitions file, must not
    # hand back the old kernel (see _compiled_record.track_code)
    with pytest.raises(DefinitionError, match=r"'score' .* does not compile with numba"):
        _load(defs, text).check()


def test_a_record_that_does_not_match_compiles_again(tmp_path):
    defs = tmp_path / "stale_defs.py"
    text = "def score(x: float) -> float:\n    return x - 1.0\n"
    _load(defs, text).check()
    record = next((tmp_path / "__pycache__").glob("stale_defs.score.fscompiled"))
    record.write_text("0" * 32)
    again = _load(defs, text).check()
    assert again.compiled is True and again(3.0) == 2.0
    assert record.read_text() != "0" * 32  # written anew


def test_numba_settings_are_part_of_the_record(tmp_path, monkeypatch):
    defs = tmp_path / "env_defs.py"
    t = _load(defs, "def score(x: float) -> float:\n    return x\n")
    plain = _compiled_record._key(t)
    monkeypatch.setenv("NUMBA_DISABLE_JIT", "1")  # a check under it proves nothing for numba
    assert _compiled_record._key(t) != plain


def test_a_closure_is_never_trusted(tmp_path):
    factor = 3.0

    def score(x: float) -> float:
        return x * factor

    t = transform(score)
    assert _compiled_record._record_path(t) is None
    assert t.check().compiled is True and t(2.0) == 6.0


def test_calling_an_unchecked_transform_still_asks_for_compile():
    @transform
    def half(x: float) -> float:
        return x / 2

    with pytest.raises(DefinitionError, match=r"is not compiled; call compile\(\)"):
        half(1.0)
