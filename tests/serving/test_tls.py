"""``serving.tls``: `featurestore serve` answers REST over HTTPS and gRPC over TLS, with the same
PEM files, optionally requiring client certificates (mutual TLS). Real servers, real handshakes.
"""

from __future__ import annotations

import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import trustme
from click.testing import CliRunner

from featurestore._cli_serve import register_commands
from featurestore.cli import cli
from featurestore.online.serving._proto import featurestore_pb2 as pb
from featurestore.online.serving._proto import featurestore_pb2_grpc as pb_grpc
from featurestore.online.serving._wire import to_value
from tests.serving.conftest import cli_serve, free_port, make_repo

register_commands(cli)

PREDICT = {"model": "fraud", "entities": {"user_id": [3], "merchant_id": [2]}}


class Certs:
    """A throwaway CA, the server's certificate (127.0.0.1, localhost) and a client's."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.ca = trustme.CA()
        server = self.ca.issue_cert("127.0.0.1", "localhost")
        client = self.ca.issue_cert("fraud-api@example.com")
        self.ca_file = folder / "ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        self.cert_file = folder / "server.pem"
        server.private_key_and_cert_chain_pem.write_to_path(str(self.cert_file))
        self.key_file = folder / "server.key"
        server.private_key_pem.write_to_path(str(self.key_file))
        self.client_file = folder / "client.pem"  # key and certificate chain, one file
        client.private_key_and_cert_chain_pem.write_to_path(str(self.client_file))
        self.client_key = client.private_key_pem.bytes()
        self.client_chain = b"".join(b.bytes() for b in client.cert_chain_pems)

    def https(self, *, client_cert: bool) -> httpx.Client:
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        if client_cert:
            ctx.load_cert_chain(str(self.client_file))
        return httpx.Client(verify=ctx, timeout=10)

    def grpc_channel(self, port: int, *, client_cert: bool) -> grpc.Channel:
        creds = grpc.ssl_channel_credentials(
            root_certificates=self.ca_file.read_bytes(),
            private_key=self.client_key if client_cert else None,
            certificate_chain=self.client_chain if client_cert else None,
        )
        return grpc.secure_channel(f"127.0.0.1:{port}", creds)


def tls_yaml(*, mutual: bool) -> str:
    ca = "    client_ca_file: certs/ca.pem\n" if mutual else ""
    return (
        "serving:\n  tls:\n    cert_file: certs/server.pem\n    key_file: certs/server.key\n" + ca
    )


def _wait_ready(client: httpx.Client, url: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if client.get(f"{url}/health/ready").status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert proc.poll() is None, proc.stdout.read().decode()  # type: ignore[union-attr]
        time.sleep(0.2)
    raise AssertionError("the TLS server never became ready")


@pytest.fixture(params=[False, True], ids=["tls", "mutual-tls"])
def tls_server(request: Any, tmp_path: Path) -> Iterator[tuple[Certs, int, int, bool]]:
    """`featurestore serve` over TLS (or mutual TLS): (certs, REST port, gRPC port, mutual)."""
    mutual = request.param
    repo = make_repo(tmp_path / "repo", serving=tls_yaml(mutual=mutual))
    certs = Certs(repo / "certs")
    rest, grpc_port = free_port(), free_port()
    with cli_serve(repo, "--port", str(rest), "--grpc-port", str(grpc_port)) as proc:
        with certs.https(client_cert=True) as c:
            _wait_ready(c, f"https://127.0.0.1:{rest}", proc)
        yield certs, rest, grpc_port, mutual


def test_rest_answers_over_https_only(tls_server: tuple[Certs, int, int, bool]) -> None:
    certs, rest, _, mutual = tls_server
    url = f"https://127.0.0.1:{rest}"
    with certs.https(client_cert=True) as c:
        r = c.post(f"{url}/predict", json=PREDICT)
        assert r.status_code == 200, r.text
        assert r.json()["model"] == "fraud" and len(r.json()["scores"]) == 1
    # plain HTTP on the TLS port is no answer
    with pytest.raises(httpx.HTTPError):
        httpx.post(f"http://127.0.0.1:{rest}/predict", json=PREDICT, timeout=5)
    # a client that does not trust the CA refuses the server's certificate
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.post(f"{url}/predict", json=PREDICT, timeout=5)
    # without a client certificate: refused under mutual TLS, answered otherwise
    with certs.https(client_cert=False) as c:
        if mutual:
            with pytest.raises(httpx.HTTPError):
                c.post(f"{url}/predict", json=PREDICT)
        else:
            assert c.post(f"{url}/predict", json=PREDICT).status_code == 200


def test_grpc_answers_over_tls_only(tls_server: tuple[Certs, int, int, bool]) -> None:
    certs, _, port, mutual = tls_server
    request = pb.PredictRequest(
        model="fraud",
        entities={k: pb.ValueList(values=[to_value(v[0])]) for k, v in PREDICT["entities"].items()},
    )
    with certs.grpc_channel(port, client_cert=True) as ch:
        reply = pb_grpc.FeatureServingStub(ch).Predict(request, timeout=10)
        assert reply.model == "fraud" and len(reply.scores) == 1
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        with pytest.raises(grpc.RpcError) as err:
            pb_grpc.FeatureServingStub(ch).Predict(request, timeout=5)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    with certs.grpc_channel(port, client_cert=False) as ch:
        stub = pb_grpc.FeatureServingStub(ch)
        if mutual:
            with pytest.raises(grpc.RpcError) as err:
                stub.Predict(request, timeout=5)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        else:
            assert len(stub.Predict(request, timeout=10).scores) == 1


def _serve_error(repo: Path) -> str:
    result = CliRunner().invoke(cli, ["-r", str(repo), "serve", "--port", str(free_port())])
    assert result.exit_code != 0
    out = result.output.strip()
    assert "Traceback" not in out and len(out.splitlines()) == 1, out
    return out


def test_bad_tls_files_are_one_line_before_any_port_opens(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", serving=tls_yaml(mutual=True))
    assert "serving.tls.cert_file 'certs/server.pem': no such file" in _serve_error(repo)
    certs = Certs(repo / "certs")
    other = trustme.CA().issue_cert("127.0.0.1")
    other.private_key_pem.write_to_path(str(certs.key_file))  # a key of another certificate
    out = _serve_error(repo)
    assert "serving.tls.cert_file 'certs/server.pem' and key_file 'certs/server.key'" in out
    fresh = Certs(repo / "certs")  # matching server files again, and a CA file that is no PEM
    fresh.ca_file.write_text("not a certificate\n")
    assert "serving.tls.client_ca_file 'certs/ca.pem' does not load" in _serve_error(repo)


def test_tls_config_needs_both_files(tmp_path: Path) -> None:
    from featurestore.config import load_config
    from featurestore.errors import ConfigError
    from featurestore.online.serving.config import serving_config

    repo = make_repo(tmp_path / "repo")
    with (repo / "featurestore.yaml").open("a") as f:  # after make_repo, which loads it
        f.write("serving:\n  tls:\n    cert_file: a.pem\n")
    with pytest.raises(ConfigError, match=r"serving\.tls\.key_file is missing"):
        serving_config(load_config(str(repo)))
