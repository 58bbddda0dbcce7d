"""The node's key store: its Ed25519 peer key and its Ethereum settlement account, encrypted.

Two files in one directory:

- ``account.json``: an Ethereum keystore v3 file (scrypt, AES-128-CTR, keccak MAC), the format
  every wallet imports, so a provider can move its earnings with tools it already trusts.
- ``peer.json``: the Ed25519 seed, sealed with libsodium's secretbox (XSalsa20-Poly1305) under a
  key derived from the password with Argon2id. The PeerId is stored beside it in clear, so a
  wrong password is reported as such rather than as a different identity.

The same password opens both. Files are written atomically with mode 0600.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nacl.exceptions
import nacl.pwhash
import nacl.secret
import nacl.utils
from eth_account import Account

from rigmesh.wire import eip712, identity

PEER_FILE = "peer.json"
ACCOUNT_FILE = "account.json"


class KeyStoreError(Exception):
    """The key store is missing, damaged, or the password is wrong."""


@dataclass(frozen=True)
class KdfCost:
    """Work factors. `STANDARD` for real keys; `FAST` only for tests and throwaway demo keys."""

    argon2_ops: int
    argon2_mem: int
    scrypt_n: int


STANDARD = KdfCost(
    nacl.pwhash.argon2id.OPSLIMIT_MODERATE, nacl.pwhash.argon2id.MEMLIMIT_MODERATE, 2**18
)
FAST = KdfCost(nacl.pwhash.argon2id.OPSLIMIT_MIN, nacl.pwhash.argon2id.MEMLIMIT_MIN, 2**10)


@dataclass(frozen=True)
class NodeKeys:
    peer: identity.PeerKey
    account: eip712.EthKey


def _write_private(path: Path, doc: dict[str, Any]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _seal_seed(seed: bytes, password: str, cost: KdfCost) -> dict[str, Any]:
    salt = nacl.utils.random(nacl.pwhash.argon2id.SALTBYTES)
    key = nacl.pwhash.argon2id.kdf(
        nacl.secret.SecretBox.KEY_SIZE, password.encode(), salt,
        opslimit=cost.argon2_ops, memlimit=cost.argon2_mem,
    )
    box = nacl.secret.SecretBox(key).encrypt(seed)
    return {
        "version": 1,
        "kind": "rigmesh-ed25519-seed",
        "peer_id": identity.peer_id_to_text(identity.PeerKey(seed).peer_id),
        "kdf": {"name": "argon2id", "opslimit": cost.argon2_ops, "memlimit": cost.argon2_mem,
                "salt": salt.hex()},
        "box": box.hex(),
    }


def _open_seed(doc: dict[str, Any], password: str) -> bytes:
    try:
        kdf = doc["kdf"]
        if doc.get("kind") != "rigmesh-ed25519-seed" or kdf["name"] != "argon2id":
            raise KeyStoreError("peer.json: not a Rigmesh peer key file")
        key = nacl.pwhash.argon2id.kdf(
            nacl.secret.SecretBox.KEY_SIZE, password.encode(), bytes.fromhex(kdf["salt"]),
            opslimit=int(kdf["opslimit"]), memlimit=int(kdf["memlimit"]),
        )
        seed = nacl.secret.SecretBox(key).decrypt(bytes.fromhex(doc["box"]))
    except nacl.exceptions.CryptoError:
        raise KeyStoreError("wrong password for peer.json") from None
    except (KeyError, TypeError, ValueError) as exc:
        raise KeyStoreError(f"peer.json is damaged: {exc}") from None
    if identity.peer_id_to_text(identity.PeerKey(seed).peer_id) != doc.get("peer_id"):
        raise KeyStoreError("peer.json: the seed does not match its PeerId")
    return seed


def read_keystore(path: Path, password: str) -> bytes:
    """The secret key in an Ethereum keystore v3 file (any wallet's export)."""
    try:
        doc = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise KeyStoreError(f"no keystore file at {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise KeyStoreError(f"{path} is not a keystore v3 JSON file: {exc}") from None
    try:
        return bytes(Account.decrypt(doc, password))
    except ValueError as exc:  # eth_account says "MAC mismatch" for a wrong password
        raise KeyStoreError(f"{path}: {exc} (wrong password?)") from None
    except (KeyError, TypeError) as exc:
        raise KeyStoreError(f"{path} is not a keystore v3 file: missing {exc}") from None


class KeyStore:
    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def exists(self) -> bool:
        return (self.directory / PEER_FILE).exists() and (self.directory / ACCOUNT_FILE).exists()

    def create(self, password: str, *, cost: KdfCost = STANDARD,
               account_secret: bytes | None = None) -> NodeKeys:
        """New keys (or an imported account secret). Refuses to overwrite existing keys."""
        if (self.directory / PEER_FILE).exists() or (self.directory / ACCOUNT_FILE).exists():
            raise KeyStoreError(f"keys already exist in {self.directory}")
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        peer = identity.PeerKey.generate()
        secret = account_secret or Account.create().key
        account = eip712.EthKey(bytes(secret))
        _write_private(
            self.directory / ACCOUNT_FILE,
            Account.encrypt(account.secret, password, kdf="scrypt", iterations=cost.scrypt_n),
        )
        _write_private(self.directory / PEER_FILE, _seal_seed(peer.seed, password, cost))
        return NodeKeys(peer, account)

    def load(self, password: str) -> NodeKeys:
        try:
            peer_doc = json.loads((self.directory / PEER_FILE).read_text())
            account_doc = json.loads((self.directory / ACCOUNT_FILE).read_text())
        except FileNotFoundError as exc:
            raise KeyStoreError(f"no keys in {self.directory}: {exc.filename}") from None
        except json.JSONDecodeError as exc:
            raise KeyStoreError(f"key file is not JSON: {exc}") from None
        seed = _open_seed(peer_doc, password)
        try:
            secret = Account.decrypt(account_doc, password)
        except ValueError as exc:
            raise KeyStoreError(f"account.json: {exc}") from None
        return NodeKeys(identity.PeerKey(seed), eip712.EthKey(bytes(secret)))

    def address(self) -> bytes:
        """The account's address, read without the password (keystore v3 keeps it in clear)."""
        try:
            return bytes.fromhex(json.loads((self.directory / ACCOUNT_FILE).read_text())["address"])
        except (FileNotFoundError, KeyError, ValueError) as exc:
            raise KeyStoreError(f"no readable account in {self.directory}: {exc}") from None

    def export_account(self, password: str, path: Path, *, new_password: str | None = None,
                       cost: KdfCost = STANDARD) -> bytes:
        """Write the account as an Ethereum keystore v3 file any wallet imports (under
        `new_password`, default the store's). Refuses to overwrite. Returns the address."""
        account = self.load(password).account
        if path.exists():
            raise KeyStoreError(f"{path} exists; not overwriting it")
        doc = Account.encrypt(account.secret, new_password or password, kdf="scrypt",
                              iterations=cost.scrypt_n)
        _write_private(path, doc)
        return account.address

    def load_or_create(self, password: str, *, cost: KdfCost = STANDARD) -> NodeKeys:
        return self.load(password) if self.exists() else self.create(password, cost=cost)
