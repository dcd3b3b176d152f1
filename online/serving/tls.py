"""TLS for the REST and gRPC servers from ``serving.tls``: the same PEM files for both.

Files are read and checked when the server starts, so a missing file, a key that does not
match its certificate, a passphrase-protected key or a file that is not PEM is one ConfigError
naming the file, before any port is opened (and never a passphrase prompt).
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

from featurestore.errors import ConfigError
from featurestore.online.serving.config import TLSConfig


def _files(tls: TLSConfig, resolve: Callable[[str], str]) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in ("cert_file", "key_file", "client_ca_file"):
        value = getattr(tls, name)
        if value is None:
            out[name] = None
            continue
        path = resolve(value)
        if not Path(path).is_file():
            raise ConfigError(f"featurestore.yaml: serving.tls.{name} {value!r}: no such file")
        out[name] = path
    return out


class _EncryptedKey(Exception):
    """Raised by the passphrase callback: OpenSSL asked for a passphrase."""


def _no_passphrase() -> bytes:
    """The ``password`` callback of ``load_cert_chain``: refuse, so OpenSSL never prompts."""
    raise _EncryptedKey


def check(tls: TLSConfig, resolve: Callable[[str], str]) -> dict[str, str | None]:
    """The absolute paths of the TLS files, checked by loading them as a server would."""
    files = _files(tls, resolve)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        ctx.load_cert_chain(
            files["cert_file"],  # type: ignore[arg-type]
            files["key_file"],
            password=_no_passphrase,
        )
    except _EncryptedKey:
        raise ConfigError(
            f"featurestore.yaml: serving.tls.key_file {tls.key_file!r} is encrypted "
            "(passphrase-protected); encrypted keys are not supported: give an unencrypted "
            "key, readable by the server's user only"
        ) from None
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(
            f"featurestore.yaml: serving.tls.cert_file {tls.cert_file!r} and key_file "
            f"{tls.key_file!r} do not load as a PEM certificate and its private key ({exc})"
        ) from None
    if files["client_ca_file"] is not None:
        try:
            ctx.load_verify_locations(files["client_ca_file"])
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(
                f"featurestore.yaml: serving.tls.client_ca_file {tls.client_ca_file!r} does not "
                f"load as PEM CA certificates ({exc})"
            ) from None
    return files


def uvicorn_options(tls: TLSConfig | None, resolve: Callable[[str], str]) -> dict[str, Any]:
    """uvicorn.run keyword arguments that serve HTTPS (empty without TLS)."""
    if tls is None:
        return {}
    files = check(tls, resolve)
    out: dict[str, Any] = {"ssl_certfile": files["cert_file"], "ssl_keyfile": files["key_file"]}
    if files["client_ca_file"] is not None:
        out["ssl_ca_certs"] = files["client_ca_file"]
        out["ssl_cert_reqs"] = ssl.CERT_REQUIRED
    return out


def grpc_credentials(tls: TLSConfig, resolve: Callable[[str], str]) -> Any:
    """grpc server credentials from the same files (client certificates required with a CA)."""
    import grpc

    files = check(tls, resolve)
    key = Path(files["key_file"]).read_bytes()  # type: ignore[arg-type]
    cert = Path(files["cert_file"]).read_bytes()  # type: ignore[arg-type]
    ca = Path(files["client_ca_file"]).read_bytes() if files["client_ca_file"] else None
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=ca, require_client_auth=ca is not None
    )
