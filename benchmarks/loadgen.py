"""A small load generator: run a call N times at concurrency C, report p50/p99/p99.9 and rate.

Targets are a Python callable (threads), a coroutine function (asyncio), or an HTTP / gRPC
endpoint on loopback (never anything else: this is for benchmarking our own servers). Runs
are bounded in count and in time. Example::

    python -m benchmarks.loadgen http://127.0.0.1:8000/health -n 2000 -c 4
    python -m benchmarks.loadgen grpc://127.0.0.1:50051/featurestore.Serving/Get \\
        --data-file req.bin -n 1000 -c 8 --mode asyncio
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import ipaddress
import json
import math
import socket
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

Mode = Literal["thread", "asyncio"]


@dataclass
class LoadResult:
    """Per-call latencies (ns, in completion order) and what the run did."""

    latencies_ns: list[int]
    errors: int
    duration_s: float
    concurrency: int
    first_error: str = ""
    stopped_by_time: bool = False
    label: str = ""
    _sorted: list[int] | None = field(default=None, repr=False)

    @property
    def n(self) -> int:
        return len(self.latencies_ns)

    @property
    def throughput(self) -> float:
        """Successful calls per second over the whole run."""
        return self.n / self.duration_s if self.duration_s > 0 else 0.0

    def percentile_us(self, q: float) -> float:
        """The q-th percentile (0-100) of the latencies in microseconds (nearest rank)."""
        if self._sorted is None or len(self._sorted) != len(self.latencies_ns):
            self._sorted = sorted(self.latencies_ns)
        s = self._sorted
        if not s:
            return math.nan
        rank = max(1, math.ceil(q / 100 * len(s)))
        return s[min(rank, len(s)) - 1] / 1000

    @property
    def p50_us(self) -> float:
        return self.percentile_us(50)

    @property
    def p99_us(self) -> float:
        return self.percentile_us(99)

    @property
    def p999_us(self) -> float:
        return self.percentile_us(99.9)

    @property
    def mean_us(self) -> float:
        return sum(self.latencies_ns) / len(self.latencies_ns) / 1000 if self.n else math.nan

    def merged(self, other: LoadResult) -> LoadResult:
        """Both runs' latencies as one sample (durations add up)."""
        return LoadResult(
            self.latencies_ns + other.latencies_ns,
            self.errors + other.errors,
            self.duration_s + other.duration_s,
            max(self.concurrency, other.concurrency),
            self.first_error or other.first_error,
            self.stopped_by_time or other.stopped_by_time,
            self.label or other.label,
        )

    def summary(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "calls": self.n,
            "errors": self.errors,
            "concurrency": self.concurrency,
            "duration_s": round(self.duration_s, 3),
            "throughput_per_s": round(self.throughput, 1),
            "p50_us": round(self.p50_us, 1),
            "p99_us": round(self.p99_us, 1),
            "p99.9_us": round(self.p999_us, 1),
            "mean_us": round(self.mean_us, 1),
            "stopped_by_time": self.stopped_by_time,
            "first_error": self.first_error,
        }

    def __str__(self) -> str:
        s = self.summary()
        head = f"{s['label']}: " if s["label"] else ""
        return (
            f"{head}{s['calls']} calls ({s['errors']} errors) at concurrency {s['concurrency']} "
            f"in {s['duration_s']} s: {s['throughput_per_s']}/s, p50 {s['p50_us']} us, "
            f"p99 {s['p99_us']} us, p99.9 {s['p99.9_us']} us"
            + (f"; first error: {self.first_error[:200]}" if self.first_error else "")
        )


def run_load(
    fn: Callable[[], Any],
    *,
    n: int,
    concurrency: int = 1,
    max_seconds: float = 60.0,
    warmup: int = 0,
    label: str = "",
) -> LoadResult:
    """Call ``fn()`` ``n`` times from ``concurrency`` threads (stops early after max_seconds)."""
    _check_bounds(n, concurrency, max_seconds)
    for _ in range(warmup):
        fn()
    if concurrency == 1:  # no thread hop: the cleanest latency sample
        return _run_serial(fn, n, max_seconds, label)
    lock = threading.Lock()
    issued = 0
    lat: list[list[int]] = [[] for _ in range(concurrency)]
    errs = [0] * concurrency
    first_error: list[str] = []
    start = time.perf_counter()
    deadline = start + max_seconds
    timed_out = threading.Event()

    def worker(w: int) -> None:
        nonlocal issued
        mine, clock = lat[w], time.perf_counter_ns
        while True:
            with lock:
                if issued >= n:
                    return
                issued += 1
            if time.perf_counter() > deadline:
                timed_out.set()
                return
            t0 = clock()
            try:
                fn()
            except Exception as exc:
                errs[w] += 1
                if not first_error:
                    first_error.append(f"{type(exc).__name__}: {exc}")
                continue
            mine.append(clock() - t0)

    threads = [threading.Thread(target=worker, args=(w,), daemon=True) for w in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(0.0, deadline - time.perf_counter()) + 5.0)
    duration = time.perf_counter() - start
    return LoadResult(
        [x for part in lat for x in part],
        sum(errs),
        duration,
        concurrency,
        first_error[0] if first_error else "",
        timed_out.is_set(),
        label,
    )


def _run_serial(fn: Callable[[], Any], n: int, max_seconds: float, label: str) -> LoadResult:
    lat: list[int] = []
    errors, first_error, stopped = 0, "", False
    clock = time.perf_counter_ns
    start = clock()
    deadline = start + int(max_seconds * 1e9)
    for _ in range(n):
        t0 = clock()
        if t0 > deadline:
            stopped = True
            break
        try:
            fn()
        except Exception as exc:
            errors += 1
            first_error = first_error or f"{type(exc).__name__}: {exc}"
            continue
        lat.append(clock() - t0)
    return LoadResult(lat, errors, (clock() - start) / 1e9, 1, first_error, stopped, label)


def run_load_async(
    fn: Callable[[], Awaitable[Any]],
    *,
    n: int,
    concurrency: int = 1,
    max_seconds: float = 60.0,
    warmup: int = 0,
    label: str = "",
) -> LoadResult:
    """Await ``fn()`` ``n`` times from ``concurrency`` tasks on a fresh event loop."""
    _check_bounds(n, concurrency, max_seconds)
    return asyncio.run(_async_load(fn, n, concurrency, max_seconds, warmup, label))


async def _async_load(
    fn: Callable[[], Awaitable[Any]],
    n: int,
    concurrency: int,
    max_seconds: float,
    warmup: int,
    label: str,
) -> LoadResult:
    for _ in range(warmup):
        await fn()
    issued = 0
    lat: list[int] = []
    errors = 0
    first_error: list[str] = []
    clock = time.perf_counter_ns
    start = clock()
    deadline = start + int(max_seconds * 1e9)
    stopped = False

    async def worker() -> None:
        nonlocal issued, errors, stopped
        while issued < n:
            issued += 1
            t0 = clock()
            if t0 > deadline:
                stopped = True
                return
            try:
                await fn()
            except Exception as exc:
                errors += 1
                if not first_error:
                    first_error.append(f"{type(exc).__name__}: {exc}")
                continue
            lat.append(clock() - t0)

    tasks = [asyncio.create_task(worker()) for _ in range(concurrency)]
    try:
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=max_seconds + 5.0)
    except asyncio.TimeoutError:
        stopped = True
    return LoadResult(
        lat,
        errors,
        (clock() - start) / 1e9,
        concurrency,
        first_error[0] if first_error else "",
        stopped,
        label,
    )


def interleaved(
    targets: dict[str, Callable[[], Any]],
    *,
    n: int,
    blocks: int = 5,
    concurrency: int = 1,
    max_seconds: float = 60.0,
    warmup: int = 50,
) -> dict[str, LoadResult]:
    """Run each target ``n`` times in total, alternating in ``blocks`` so that drift on a shared
    machine hits every target alike; returns one merged result per target."""
    out: dict[str, LoadResult] = {}
    per_block = max(1, n // blocks)
    budget = max_seconds / (blocks * len(targets))
    with frozen_heap():
        for fn in targets.values():
            for _ in range(warmup):
                fn()
        for _ in range(blocks):
            for name, fn in targets.items():
                res = run_load(
                    fn, n=per_block, concurrency=concurrency, max_seconds=budget, label=name
                )
                out[name] = out[name].merged(res) if name in out else res
    return out


@contextlib.contextmanager
def frozen_heap() -> Iterator[None]:
    """Keep what the benchmark process already holds (generated data, earlier results) out of
    the garbage collector while targets run, as a serving worker freezes its startup heap: else
    a full collection over unrelated data lands on whichever target allocated last (tens of ms
    on a fat process). Collections of what the targets themselves allocate still happen."""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _check_bounds(n: int, concurrency: int, max_seconds: float) -> None:
    if n < 1 or concurrency < 1:
        raise ValueError(f"need n >= 1 and concurrency >= 1, got n={n}, concurrency={concurrency}")
    if not 0 < max_seconds <= 3600:
        raise ValueError(f"max_seconds must be in (0, 3600], got {max_seconds}")


# ---------------------------------------------------------------------------- network targets


def check_loopback(host: str) -> None:
    """Refuse any host that does not resolve to loopback only."""
    try:
        infos = socket.getaddrinfo(host, None)
    except socket.gaierror as exc:
        raise ValueError(f"cannot resolve {host!r}: {exc}") from None
    bad = [i[4][0] for i in infos if not ipaddress.ip_address(i[4][0].split("%")[0]).is_loopback]
    if bad or not infos:
        raise ValueError(
            f"loadgen only targets loopback; {host!r} resolves to {sorted(set(bad))}. Use "
            "127.0.0.1, ::1 or localhost"
        )


def http_call(
    url: str,
    *,
    method: str = "GET",
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 5.0,
) -> tuple[Callable[[], Any], Callable[[], None]]:
    """(call, close) for one HTTP request on loopback; a non-2xx answer counts as an error."""
    import httpx

    check_loopback(urlsplit(url).hostname or "")
    client = httpx.Client(timeout=timeout, headers=headers or {})

    def call() -> bytes:
        r = client.request(method, url, content=body)
        if r.status_code >= 300:
            raise RuntimeError(f"HTTP {r.status_code}: {r.text[:200]}")
        return r.content

    return call, client.close


def http_call_async(
    url: str,
    *,
    method: str = "GET",
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 5.0,
) -> Callable[[], Awaitable[bytes]]:
    """A coroutine function doing one HTTP request on loopback (client made per event loop)."""
    import httpx

    check_loopback(urlsplit(url).hostname or "")
    clients: dict[int, Any] = {}

    async def call() -> bytes:
        loop_id = id(asyncio.get_running_loop())
        client = clients.get(loop_id)
        if client is None:
            client = clients[loop_id] = httpx.AsyncClient(timeout=timeout, headers=headers or {})
        r = await client.request(method, url, content=body)
        if r.status_code >= 300:
            raise RuntimeError(f"HTTP {r.status_code}: {r.text[:200]}")
        return r.content

    return call


def _grpc_parts(url: str) -> tuple[str, str]:
    """``grpc://host:port/pkg.Service/Method`` -> ("host:port", "/pkg.Service/Method")."""
    parts = urlsplit(url)
    if parts.scheme != "grpc" or not parts.hostname or not parts.port or parts.path.count("/") != 2:
        raise ValueError(f"expected grpc://host:port/package.Service/Method, got {url!r}")
    check_loopback(parts.hostname)
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{host}:{parts.port}", parts.path


def grpc_call(
    url: str, request: bytes, *, timeout: float = 5.0
) -> tuple[Callable[[], bytes], Callable[[], None]]:
    """(call, close) for one unary gRPC call with a pre-serialized request, on loopback."""
    import grpc

    target, method = _grpc_parts(url)
    channel = grpc.insecure_channel(target)
    stub = channel.unary_unary(method)  # bytes in, bytes out: no codegen needed

    def call() -> bytes:
        return stub(request, timeout=timeout)

    return call, channel.close


def grpc_call_async(
    url: str, request: bytes, *, timeout: float = 5.0
) -> Callable[[], Awaitable[bytes]]:
    """A coroutine function doing one unary gRPC call (grpc.aio; channel per event loop)."""
    import grpc

    target, method = _grpc_parts(url)
    stubs: dict[int, Any] = {}

    async def call() -> bytes:
        loop_id = id(asyncio.get_running_loop())
        stub = stubs.get(loop_id)
        if stub is None:
            stub = stubs[loop_id] = grpc.aio.insecure_channel(target).unary_unary(method)
        return await stub(request, timeout=timeout)

    return call


# ---------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point: print a one-line summary (or JSON) of a bounded load run."""
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.loadgen", description=__doc__.split("\n")[0]
    )
    p.add_argument(
        "url", help="http(s)://127.0.0.1:PORT/path or grpc://127.0.0.1:PORT/pkg.Svc/Method"
    )
    p.add_argument("-n", "--requests", type=int, default=1000, help="calls in total (default 1000)")
    p.add_argument("-c", "--concurrency", type=int, default=1, help="callers at once (default 1)")
    p.add_argument("-t", "--max-seconds", type=float, default=60.0, help="stop after (default 60)")
    p.add_argument("--warmup", type=int, default=20, help="untimed calls first (default 20)")
    p.add_argument("--mode", choices=["thread", "asyncio"], default="thread")
    p.add_argument("-X", "--method", default=None, help="HTTP method (default GET, POST with data)")
    p.add_argument("-d", "--data", default=None, help="request body (a string)")
    p.add_argument("--data-file", default=None, help="request body from a file (gRPC: serialized)")
    p.add_argument("-H", "--header", action="append", default=[], help="'Name: value' (HTTP)")
    p.add_argument("--timeout", type=float, default=5.0, help="per-call timeout in seconds")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    a = p.parse_args(argv)

    body: bytes | None = a.data.encode() if a.data is not None else None
    if a.data_file:
        with open(a.data_file, "rb") as f:
            body = f.read()
    try:
        result = _run_cli(a, body)
    except ValueError as exc:
        print(f"loadgen: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # the target failed during warm-up: say so in one line
        first = (str(exc).strip().splitlines() or [""])[0]
        print(
            f"loadgen: {a.url} failed during warm-up: {type(exc).__name__}: {first}",
            file=sys.stderr,
        )
        return 1
    print(json.dumps(result.summary()) if a.json else str(result))
    return 1 if result.errors and not result.n else 0


def _run_cli(a: argparse.Namespace, body: bytes | None) -> LoadResult:
    headers = dict(h.split(":", 1) for h in a.header)
    headers = {k.strip(): v.strip() for k, v in headers.items()}
    kw: dict[str, Any] = {
        "n": a.requests,
        "concurrency": a.concurrency,
        "max_seconds": a.max_seconds,
        "warmup": a.warmup,
        "label": a.url,
    }
    if a.url.startswith("grpc://"):
        if a.mode == "asyncio":
            return run_load_async(grpc_call_async(a.url, body or b"", timeout=a.timeout), **kw)
        call, close = grpc_call(a.url, body or b"", timeout=a.timeout)
    elif a.url.startswith(("http://", "https://")):
        method = a.method or ("POST" if body is not None else "GET")
        if a.mode == "asyncio":
            fn = http_call_async(
                a.url, method=method, body=body, headers=headers, timeout=a.timeout
            )
            return run_load_async(fn, **kw)
        call, close = http_call(a.url, method=method, body=body, headers=headers, timeout=a.timeout)
    else:
        raise ValueError(f"unsupported URL {a.url!r}; use http://, https:// or grpc://")
    try:
        return run_load(call, **kw)
    finally:
        close()


if __name__ == "__main__":
    sys.exit(main())
