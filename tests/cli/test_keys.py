"""`rigmesh init` and `rigmesh keys`: the encrypted key store, keystore v3 import and export."""

from __future__ import annotations

import json
import secrets
from pathlib import Path

from eth_account import Account

from rigmesh.cli import exits
from tests.cli.conftest import Cli


def test_init_then_show(cli: Cli) -> None:
    made = cli.run("init", "--light-kdf")
    assert made.returncode == 0, made.stderr
    assert made.stdout.startswith("peer id  12D3KooW")
    shown = cli.run("keys", "show")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout == made.stdout
    # `keys init` is the same command as `init`
    assert cli.run("keys", "init", "--light-kdf").returncode == exits.KEYS


def test_key_errors_say_what_to_do(cli: Cli) -> None:
    missing = cli.run("keys", "show")
    assert missing.returncode == exits.KEYS
    assert "no keys in" in missing.stderr and "rigmesh init" in missing.stderr
    assert cli.run("init", "--light-kdf").returncode == 0
    wrong = cli.run("keys", "show", password="nope")
    assert wrong.returncode == exits.KEYS and "wrong password" in wrong.stderr
    again = cli.run("init", "--light-kdf")
    assert again.returncode == exits.KEYS and "already exist" in again.stderr
    no_tty = cli.run("keys", "show", password=None)
    assert no_tty.returncode == exits.USAGE and "set RIGMESH_PASSWORD" in no_tty.stderr


def test_import_key_and_export_keystore_any_wallet_reads(cli: Cli, tmp_path: Path) -> None:
    secret = secrets.token_bytes(32)
    address = Account.from_key(secret).address.lower()
    made = cli.run("init", "--light-kdf", "--import-key", "0x" + secret.hex())
    assert made.returncode == 0, made.stderr
    assert f"account  {address}" in made.stdout
    out = tmp_path / "wallet.json"
    exported = cli.run("keys", "export", "--keystore", str(out), "--light-kdf")
    assert exported.returncode == 0, exported.stderr
    doc = json.loads(out.read_text())
    assert doc["version"] == 3 and bytes(Account.decrypt(doc, "pw")) == secret
    assert out.stat().st_mode & 0o777 == 0o600
    again = cli.run("keys", "export", "--keystore", str(out))
    assert again.returncode == exits.KEYS and "not overwriting" in again.stderr

    # A second node imports the file a wallet exported (its own password).
    other = Cli(tmp_path / "other")
    imported = other.run("init", "--light-kdf", "--import-keystore", str(out),
                         RIGMESH_KEYSTORE_PASSWORD="pw")
    assert imported.returncode == 0, imported.stderr
    assert f"account  {address}" in imported.stdout
    wrong = Cli(tmp_path / "third").run("init", "--light-kdf", "--import-keystore", str(out),
                                        RIGMESH_KEYSTORE_PASSWORD="nope")
    assert wrong.returncode == exits.KEYS and "MAC mismatch" in wrong.stderr


def test_import_key_refuses_a_malformed_key(cli: Cli) -> None:
    bad = cli.run("init", "--light-kdf", "--import-key", "abc")
    assert bad.returncode == exits.USAGE
    assert "--import-key: expected 32 bytes as 64 hex digits" in bad.stderr
    both = cli.run("init", "--import-key", "00" * 32, "--import-keystore", "x.json")
    assert both.returncode == exits.USAGE and "not allowed with argument" in both.stderr
