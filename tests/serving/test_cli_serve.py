"""``featurestore models ...`` and ``featurestore serve`` (a real subprocess, REST + gRPC)."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import httpx
import pytest
from click.testing import CliRunner

from featurestore._cli_serve import register_commands
from featurestore.cli import cli
from featurestore.online.serving._proto import featurestore_pb2 as pb
from featurestore.online.serving._proto import featurestore_pb2_grpc as pb_grpc
from tests.serving.conftest import cli_serve, free_port, train_model

register_commands(cli)


def run(repo: Path, *args: str):
    return CliRunner().invoke(cli, ["-r", str(repo), *args], catch_exceptions=False)


def register(repo: Path, name: str, artifact: Path, service: str, *more: str):
    """``featurestore models register NAME --flavor lightgbm --path ART --features SERVICE``."""
    return run(
        repo, "models", "register", name, "--flavor", "lightgbm", "--path", str(artifact),
        "--features", service, *more,
    )  # fmt: skip


def test_models_register_list_promote(fresh_repo: Path, tmp_path: Path) -> None:
    art = train_model(tmp_path / "new.txt", seed=5)
    r = register(fresh_repo, "fraud", art, "scoring", "--description", "retrained")
    assert r.exit_code == 0, r.output
    assert "registered fraud v3" in r.output
    r = run(fresh_repo, "models", "promote", "fraud", "v3", "--alias", "production")
    assert r.exit_code == 0 and "fraud@production -> v3" in r.output
    r = run(fresh_repo, "models", "promote", "fraud", "2", "--alias", "canary", "--share", "0.1")
    assert r.exit_code == 0 and "10%" in r.output
    r = run(fresh_repo, "models", "list")
    assert "fraud: canary=v2 (10%), production=v3" in r.output
    assert "retrained" in r.output


def test_models_register_mismatch_is_one_clear_line(fresh_repo: Path, tmp_path: Path) -> None:
    art = train_model(tmp_path / "bad.txt", seed=5, names=["tx_count", "amount_mean", "zip"])
    r = register(fresh_repo, "fraud", art, "scoring")
    assert r.exit_code == 1
    assert "error: model 'fraud' takes 3 inputs" in r.output and "['zip']" in r.output
    assert "Traceback" not in r.output
    r = run(fresh_repo, "models", "promote", "fraud", "9")
    assert r.exit_code == 1 and "no version 9" in r.output
    r = register(fresh_repo, "x", art, "nope")
    assert r.exit_code == 1 and "no feature service 'nope'" in r.output


@pytest.mark.parametrize("workers", [1, 2])
def test_serve_starts_rest_and_grpc_from_the_config(fresh_repo: Path, workers: int) -> None:
    rest, grpc_port = free_port(), free_port()
    args = ("--port", str(rest), "--grpc-port", str(grpc_port), "--workers", str(workers))
    with cli_serve(fresh_repo, *args) as proc:
        deadline = time.monotonic() + 60
        ready = None
        while time.monotonic() < deadline:
            try:
                ready = httpx.get(f"http://127.0.0.1:{rest}/health/ready", timeout=2)
                if ready.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        assert ready is not None and ready.status_code == 200, proc.stdout.read1().decode()  # type: ignore[union-attr]
        body = {"model": "fraud", "entities": {"user_id": [1], "merchant_id": [1]}}

        answered = [0]

        def predict_ok() -> bool:
            r = httpx.post(f"http://127.0.0.1:{rest}/predict", json=body, timeout=5)
            answered[0] += r.status_code == 200
            return r.status_code == 200 and r.json().get("version") == 1

        # a worker takes connections only once warm, so after the first answer every one is real
        while time.monotonic() < deadline and not predict_ok():
            time.sleep(0.2)
        assert all(predict_ok() for _ in range(10))  # new connections, spread over the workers
        # every scrape, whichever worker answers it, counts every worker's predictions
        for _ in range(6):
            text = httpx.get(f"http://127.0.0.1:{rest}/metrics", timeout=5).text
            ok = [
                float(line.rsplit(" ", 1)[1])
                for line in text.splitlines()
                if line.startswith('featurestore_requests_total{endpoint="predict",outcome="ok"}')
            ]
            assert ok == [answered[0]], text
            # read at scrape time, the same from every worker (one line each, not one per worker)
            assert text.count("\nfeaturestore_registry_version 1.0\n") == 1, text
            assert (
                text.count('featurestore_model_version{alias="production",model="fraud"} 1.0') == 1
            )
            assert (
                text.count(
                    'featurestore_materialization_watermark_timestamp_seconds{view="user_stats"}'
                )
                == 1
            )
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as ch:
            stub = pb_grpc.FeatureServingStub(ch)
            for _ in range(50):
                try:
                    if stub.Ready(pb.HealthRequest(), timeout=2).ready:
                        break
                except grpc.RpcError:
                    pass
                time.sleep(0.2)
            assert stub.Ready(pb.HealthRequest(), timeout=5).ready


def test_train_demo_model_registers_production_and_predicts(fresh_repo: Path) -> None:
    import numpy as np
    import polars as pl

    from featurestore._cli_serve import train_demo_model
    from featurestore.online.models.repo import model_registry
    from featurestore.store import FeatureStore

    rng = np.random.default_rng(0)
    n = 2000
    risk = rng.random(n)
    df = pl.DataFrame({
        "user_id": rng.integers(1, 50, n), "merchant_id": rng.integers(1, 10, n),
        "tx_count": rng.integers(0, 500, n), "amount_mean": rng.random(n) * 75,
        "risk": risk, "is_fraud": (risk + rng.normal(0, 0.1, n) > 0.7).astype(np.int8),
    })  # fmt: skip
    lines: list[str] = []
    with FeatureStore(fresh_repo) as store:
        figures = train_demo_model(store, df, "is_fraud", "scoring", lines.append)
        entry = model_registry(store).get("fraud")
    assert figures["model_version"] == 3 and entry.aliases["production"].version == 3
    assert figures["test_auc"] > 0.8  # the label follows 'risk'
    assert figures["predict_p50_us"] > 0
    assert any("registered fraud v3 as production" in x for x in lines)
    assert any("predict fraud" in x for x in lines)
    why = next(x for x in lines if x.lstrip().startswith("why "))
    assert "(explain=True): risk " in why  # the label follows 'risk': its contribution leads


def test_register_against_a_service_with_text_features_is_refused(
    fresh_repo: Path, tmp_path: Path
) -> None:
    art = train_model(tmp_path / "m.txt", seed=5)
    r = register(fresh_repo, "fraud", art, "everything")
    assert r.exit_code == 1
    assert "'user_stats:country' of type string" in r.output


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--port", "-1"], "'--port': -1 is not in the range 0<=x<=65535"),
        (["--grpc-port", "70000"], "'--grpc-port': 70000 is not in the range 0<=x<=65535"),
        (["--workers", "0"], "'--workers': 0 is not in the range x>=1"),
    ],
)
def test_serve_refuses_bad_ports_and_worker_counts(
    fresh_repo: Path, args: list[str], needle: str
) -> None:
    out = run(fresh_repo, "serve", *args)
    assert out.exit_code == 2 and needle in out.output


@pytest.mark.parametrize("flag", ["--port", "--grpc-port"])
def test_serve_names_a_port_in_use_in_one_line(fresh_repo: Path, flag: str) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        other = "--grpc-port" if flag == "--port" else "--port"
        out = run(fresh_repo, "serve", flag, str(port), other, str(free_port()))
    what = "REST" if flag == "--port" else "gRPC"
    assert out.exit_code == 1
    assert out.output.strip() == (
        f"Error: {what} port {port} on 127.0.0.1 cannot be used: Address already in use; pick "
        f"another with {flag} or in featurestore.yaml"
    )
