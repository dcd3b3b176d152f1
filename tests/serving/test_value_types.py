"""Every feature type the README lists comes back over REST, gRPC and `featurestore get`:
bytes as base64 text in JSON (as protobuf's JSON mapping writes them), times as RFC 3339."""

from __future__ import annotations

import base64
import json
import textwrap
from datetime import datetime, timedelta, timezone
from pathlib import Path

import grpc
import httpx
import pyarrow as pa
import pyarrow.parquet as pq
from click.testing import CliRunner

from featurestore import FeatureStore
from featurestore.cli import cli
from featurestore.online.serving._proto import featurestore_pb2 as pb
from featurestore.online.serving._proto import featurestore_pb2_grpc as pb_grpc
from featurestore.online.serving.grpc_server import column_values, to_value

DEFS = """
from featurestore import (Array, Bool, Bytes, Entity, FeatureView, Field, Float32, Int32,
                          ParquetSource, String, UnixTimestamp)

user = Entity("user", join_keys=["user_id"])
kinds = FeatureView(
    name="kinds",
    entities=[user],
    source=ParquetSource("data/kinds.parquet"),
    schema=[Field("i32", Int32), Field("f32", Float32), Field("flag", Bool), Field("s", String),
            Field("raw", Bytes), Field("when", UnixTimestamp), Field("emb", Array(Float32))],
)
"""
RAW = b"\x00\x01\xfe\xff featurestore"
FEATURES = [f"kinds:{f}" for f in ("i32", "f32", "flag", "s", "raw", "when", "emb")]


def _repo(root: Path) -> tuple[Path, datetime]:
    root.mkdir(parents=True)
    (root / "featurestore.yaml").write_text(
        "project: kinds\nonline_store:\n  type: embedded\n  path: data/online\n  map_size: 64MB\n"
    )
    (root / "definitions.py").write_text(textwrap.dedent(DEFS))
    t = datetime.now(timezone.utc).replace(microsecond=123456) - timedelta(hours=1)
    (root / "data").mkdir()
    pq.write_table(
        pa.table(
            {
                "user_id": pa.array([1, 2], pa.int64()),
                "event_timestamp": pa.array([t, t], pa.timestamp("us", tz="UTC")),
                "i32": pa.array([7, None], pa.int32()),
                "f32": pa.array([1.5, None], pa.float32()),
                "flag": pa.array([True, None]),
                "s": pa.array(["x", None]),
                "raw": pa.array([RAW, None], pa.binary()),
                "when": pa.array([t, None], pa.timestamp("us", tz="UTC")),
                "emb": pa.array([[0.5, -1.0], None], pa.list_(pa.float32())),
            }
        ),
        root / "data" / "kinds.parquet",
    )
    with FeatureStore(root) as store:
        store.apply()
        store.materialize(t - timedelta(days=1), t + timedelta(minutes=1))
    return root, t


def test_every_type_over_rest_grpc_and_the_cli(tmp_path: Path, serve) -> None:
    repo, t = _repo(tmp_path / "repo")
    server = serve(repo)
    r = httpx.post(
        f"{server.url}/get-online-features",
        json={"features": FEATURES, "entities": {"user_id": [1, 2, 3]}},
        timeout=10,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    got = dict(zip(body["feature_names"], body["results"], strict=True))
    assert got["raw"]["values"] == [base64.b64encode(RAW).decode(), None, None]
    assert got["when"]["values"] == [t.isoformat(), None, None]
    assert got["emb"]["values"] == [[0.5, -1.0], None, None]
    assert [got[f]["values"][0] for f in ("i32", "f32", "flag", "s")] == [7, 1.5, True, "x"]
    assert got["raw"]["statuses"] == ["PRESENT", "PRESENT", "NOT_FOUND"]

    with grpc.insecure_channel(server.grpc_target) as ch:
        resp = pb_grpc.FeatureServingStub(ch).GetOnlineFeatures(
            pb.GetOnlineFeaturesRequest(
                features=FEATURES,
                entities={"user_id": pb.ValueList(values=[to_value(1), to_value(2)])},
            )
        )
    cols = {c.name: column_values(c) for c in resp.columns}
    assert cols["raw"] == [RAW, None]  # bytes as bytes on the wire
    assert cols["s"] == ["x", None] and cols["emb"][1] is None

    server.stop()  # one handle on the LMDB file per process: the CLI opens its own
    out = CliRunner().invoke(
        cli, ["-r", str(repo), "get", "--features", ",".join(FEATURES), "--entity", "user_id=1"]
    )
    assert out.exit_code == 0, out.output
    printed = json.loads(out.output)["features"]
    assert printed["raw"] == [base64.b64encode(RAW).decode()]
    assert printed["when"] == [t.isoformat()]
