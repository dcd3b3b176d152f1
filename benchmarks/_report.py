"""Result rows (workload | ours | floor | ratio | target | met?) and the results.md writer."""

from __future__ import annotations

import platform
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RERUN = "scripts/bench.sh"


@dataclass
class Row:
    """One line of the results table."""

    workload: str
    ours: str
    floor: str
    ratio: str
    target: str
    met: bool | None
    nodeid: str = ""


ROWS: list[Row] = []
NOTES: list[str] = []  # extra lines under the table
FAILED: list[tuple[str, str]] = []  # (nodeid, one-line reason) of benchmarks that errored


def record(
    benchmark: Any,
    *,
    workload: str,
    ours: str,
    floor: str,
    ratio: float,
    target: str,
    met: bool,
    nodeid: str = "",
    **figures: Any,
) -> Row:
    """Put the figures into ``benchmark.extra_info`` and add a row to the results table."""
    info = {
        "workload": workload,
        "ours": ours,
        "floor": floor,
        "ratio": round(ratio, 4),
        "target": target,
        "met": bool(met),
    }
    info.update({k: _plain(v) for k, v in figures.items()})
    benchmark.extra_info.update(info)
    row = Row(workload, ours, floor, f"{ratio:.2f}", target, bool(met), nodeid)
    ROWS.append(row)
    return row


def record_time_ratio(
    benchmark: Any,
    nodeid: str,
    *,
    workload: str,
    rows: int,
    ours_times: Sequence[float],
    floor_times: Sequence[float],
    floor_what: str,
    target: float,
) -> Row:
    """:func:`record` a spine-sized job timed against its floor: each side's median round
    (seconds and rows/s), ours / floor against ``target``."""
    ours_s, floor_s = median(ours_times), median(floor_times)
    ratio = ours_s / floor_s
    return record(
        benchmark,
        workload=workload,
        ours=f"{ours_s:.2f} s ({fmt_rate(rows / ours_s)})",
        floor=f"{floor_s:.2f} s ({fmt_rate(rows / floor_s)}), {floor_what}",
        ratio=ratio,
        target=f"time ratio <= {target}",
        met=ratio <= target,
        nodeid=nodeid,
        ours_s=ours_s,
        floor_s=floor_s,
        ours_rounds_s=list(ours_times),
        floor_rounds_s=list(floor_times),
        spine_rows=rows,
    )


def _plain(v: Any) -> Any:
    """JSON-friendly figures (numpy scalars -> Python, floats rounded)."""
    item = getattr(v, "item", None)
    if item is not None:
        v = item()
    if isinstance(v, float):
        return round(v, 3)
    return v


def timed(fn: Callable[..., Any], sink: list[float]) -> Callable[..., Any]:
    """``fn`` wrapped so every call appends its wall time (seconds) to ``sink``."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            sink.append(time.perf_counter() - t0)

    return wrapper


def median(values: Sequence[float]) -> float:
    s = sorted(values)
    n = len(s)
    if not n:
        raise ValueError("median of no values")
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


def fmt_rate(rows_per_s: float) -> str:
    if rows_per_s >= 1e6:
        return f"{rows_per_s / 1e6:.2f}M rows/s"
    return f"{rows_per_s / 1e3:.0f}k rows/s"


def fmt_us(us: float) -> str:
    return f"{us / 1000:.2f} ms" if us >= 1000 else f"{us:.0f} us"


def _machine() -> str:
    try:
        redis_v = subprocess.run(
            ["redis-server", "--version"], capture_output=True, text=True, timeout=5
        ).stdout.split()[2]
    except (OSError, IndexError, subprocess.SubprocessError):
        redis_v = "?"
    import os

    return (
        f"{os.cpu_count()} CPU(s), Python {platform.python_version()}, "
        f"redis-server {redis_v.removeprefix('v=')}, {platform.machine()}"
    )


def write_results(path: Path, scale: dict[str, int], notes: Sequence[str] = ()) -> str:
    """Render the table (plus failures) to ``path`` and return the text."""
    lines = [
        "# Benchmark results",
        "",
        f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {_machine()}.",
        f"Rerun: `{RERUN}` (data: {_scale_text(scale)}).",
        "",
        "Every figure is measured next to its floor (the raw operation on the same data, same",
        "machine, same run, rounds interleaved). Each ratio is in the direction its target uses.",
        "",
        "| workload | ours | floor | ratio | target | met? |",
        "|---|---|---|---|---|---|",
    ]
    for r in ROWS:
        met = "?" if r.met is None else ("yes" if r.met else "**no**")
        lines.append(f"| {r.workload} | {r.ours} | {r.floor} | {r.ratio} | {r.target} | {met} |")
    if FAILED:
        lines += ["", "Benchmarks that did not finish:", ""]
        lines += [f"- `{nodeid}`: {why}" for nodeid, why in FAILED]
    if notes or NOTES:
        lines += ["", *NOTES, *notes]
    text = "\n".join(lines) + "\n"
    path.write_text(text)
    return text


def _scale_text(scale: dict[str, int]) -> str:
    return ", ".join(f"{k}={v:,}" for k, v in scale.items())
