from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from eth_account import Account

from rigmesh.store.keys import ACCOUNT_FILE, FAST, PEER_FILE, KeyStore, KeyStoreError


def test_create_then_load_gives_the_same_identity(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys")
    made = store.create("hunter2", cost=FAST)
    loaded = KeyStore(tmp_path / "keys").load("hunter2")
    assert loaded.peer.peer_id == made.peer.peer_id
    assert loaded.account.address == made.account.address
    for name in (PEER_FILE, ACCOUNT_FILE):
        assert stat.S_IMODE((tmp_path / "keys" / name).stat().st_mode) == 0o600


def test_account_file_is_a_wallet_keystore(tmp_path: Path) -> None:
    keys = KeyStore(tmp_path).create("pw", cost=FAST)
    doc = json.loads((tmp_path / ACCOUNT_FILE).read_text())
    assert doc["version"] == 3
    assert bytes(Account.decrypt(doc, "pw")) == keys.account.secret


def test_wrong_password_and_damage_are_typed_errors(tmp_path: Path) -> None:
    store = KeyStore(tmp_path)
    store.create("right", cost=FAST)
    with pytest.raises(KeyStoreError, match="wrong password"):
        store.load("wrong")
    doc = json.loads((tmp_path / PEER_FILE).read_text())
    doc["box"] = doc["box"][:-2] + ("00" if doc["box"][-2:] != "00" else "11")
    (tmp_path / PEER_FILE).write_text(json.dumps(doc))
    with pytest.raises(KeyStoreError):
        store.load("right")
    (tmp_path / PEER_FILE).write_text("{not json")
    with pytest.raises(KeyStoreError, match="not JSON"):
        store.load("right")


def test_refuses_to_overwrite_and_reports_missing(tmp_path: Path) -> None:
    store = KeyStore(tmp_path)
    with pytest.raises(KeyStoreError, match="no keys"):
        store.load("pw")
    store.create("pw", cost=FAST)
    with pytest.raises(KeyStoreError, match="already exist"):
        store.create("pw", cost=FAST)
    assert store.load_or_create("pw").peer.peer_id == store.load("pw").peer.peer_id
