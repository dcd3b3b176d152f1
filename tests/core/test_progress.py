"""Progress bars count rows as whole numbers when there are few (no "5.00/5.00")."""

from __future__ import annotations

import pytest

from featurestore._progress import progress_bar


@pytest.mark.parametrize(("total", "shown"), [(5, "5/5"), (20_000, "20.0k/20.0k")])
def test_the_count_reads_as_rows(total: int, shown: str, capsys: pytest.CaptureFixture) -> None:
    with progress_bar(total, "materialize v") as bar:
        bar.update(total)
    err = capsys.readouterr().err
    assert f" {shown} " in err, err
    assert "5.00/" not in err and "/5.00" not in err  # the rate may read "10565.00rows/s"
