"""Progress bars for long work (materialization, training sets); silent when disabled."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class _Null:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix_str(self, s: str) -> None:
        pass


@contextmanager
def progress_bar(
    total: int | None, desc: str, *, enabled: bool = True, unit: str = "rows"
) -> Iterator[Any]:
    """A tqdm bar on stderr when enabled, else an object with the same ``update``."""
    if not enabled:
        yield _Null()
        return
    from tqdm import tqdm

    with tqdm(
        total=total,
        desc=desc,
        unit=unit,
        unit_scale=total is None or total >= 10_000,  # else "5/5", not "5.00/5.00"
        file=sys.stderr,
        dynamic_ncols=True,
        leave=True,
    ) as bar:
        yield bar
