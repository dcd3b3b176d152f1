"""``featurestore keys create|list|revoke``: the API keys the servers ask for with serving.auth.

The keys file (``serving.auth.keys_file``, default secrets/api_keys.json) holds each key's
SHA-256, never the key: ``create`` prints the key once, and a lost key is revoked and replaced.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import click

from featurestore.errors import ConfigError

if TYPE_CHECKING:
    from featurestore.online.serving.auth import ApiKey


def keys_file(repo: str) -> tuple[Path, bool]:
    """The keys file of the repo and whether ``serving.auth`` is on in featurestore.yaml."""
    from featurestore.config import load_config
    from featurestore.online.serving.config import AuthConfig, serving_config

    config = load_config(repo)
    auth = serving_config(config).auth
    return Path(config.resolve((auth or AuthConfig()).keys_file)), auth is not None


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold the keys file's lock: two CLI runs must not lose each other's changes."""
    from filelock import FileLock

    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with FileLock(str(path) + ".lock", timeout=10):
        yield


def _existing(path: Path) -> list[ApiKey]:
    from featurestore.online.serving.auth import read_keys

    return read_keys(path) if path.exists() else []


_CREATE = "featurestore keys create NAME --scope features"


def _repo(ctx: click.Context) -> str:
    return (ctx.obj or {}).get("repo", ".")


@click.group()
def keys() -> None:
    """Create, list and revoke the API keys of the REST and gRPC servers (serving.auth)."""


@keys.command("create")
@click.argument("name")
@click.option(
    "--scope",
    "scopes",
    multiple=True,
    required=True,
    help="What the key may do (repeatable): features, predict, push, read, metrics.",
)
@click.pass_context
def create(ctx: click.Context, name: str, scopes: tuple[str, ...]) -> None:
    """Make key NAME and print it once (the keys file keeps only its hash)."""
    from featurestore.online.serving.auth import make_entry, new_key, write_keys

    try:
        path, auth_on = keys_file(_repo(ctx))
        key = new_key()
        entry = make_entry(name, key, scopes)
        with _locked(path):
            existing = _existing(path)
            if any(k.name == name for k in existing):
                raise click.ClickException(
                    f"an API key named '{name}' already exists in {path}; revoke it first or "
                    "pick another name"
                )
            write_keys(path, [*existing, entry])
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    shown = ", ".join(entry.scope_list)
    click.echo(f"created API key '{name}' (scopes: {shown}) in {path}:")
    click.echo(key)
    click.echo("Copy it now: it is not stored anywhere (the keys file keeps only its SHA-256).")
    if not auth_on:
        click.echo(
            "note: serving.auth is not set in featurestore.yaml, so the servers do not ask for "
            "keys yet; add 'auth: {}' under 'serving:' to switch it on"
        )


@keys.command("list")
@click.pass_context
def list_keys(ctx: click.Context) -> None:
    """List the keys: name, scopes, created (never keys or hashes)."""
    try:
        path, auth_on = keys_file(_repo(ctx))
        entries = _existing(path)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    if not entries:
        click.echo(f"no API keys in {path}; create one with `{_CREATE}`")
        return
    width = max(len(k.name) for k in entries)
    for k in entries:
        click.echo(f"{k.name:<{width}}  {','.join(k.scope_list):<36}  {k.created}")
    if not auth_on:
        click.echo("note: serving.auth is not set in featurestore.yaml: servers ask for no key")


@keys.command("revoke")
@click.argument("name")
@click.pass_context
def revoke(ctx: click.Context, name: str) -> None:
    """Remove key NAME; running servers refuse it within about a second."""
    from featurestore.online.serving.auth import write_keys

    try:
        path, _ = keys_file(_repo(ctx))
        with _locked(path):
            existing = _existing(path)
            kept = [k for k in existing if k.name != name]
            if len(kept) == len(existing):
                names = ", ".join(k.name for k in existing) or "none"
                raise click.ClickException(f"no API key named '{name}' in {path} (keys: {names})")
            write_keys(path, kept)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"revoked API key '{name}'")
