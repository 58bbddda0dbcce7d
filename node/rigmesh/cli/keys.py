"""`rigmesh init` and `rigmesh keys init|show|export`: the node's encrypted key store.

The store holds the node's libp2p peer key (its identity on the network) and its Ethereum
account (what pays and gets paid), both under one password: $RIGMESH_PASSWORD, or asked.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from rigmesh.cli import settings
from rigmesh.cli.common import key_store, load_keys, password, secret
from rigmesh.cli.exits import KEYS, USAGE, CliError

if TYPE_CHECKING:  # command modules import only what parsing needs (`rigmesh --help` is fast)
    from rigmesh.store.keys import NodeKeys


def _show(keys: NodeKeys) -> int:
    from rigmesh.wire import identity

    print(f"peer id  {identity.peer_id_to_text(keys.peer.peer_id)}")
    print(f"account  0x{keys.account.address.hex()}")
    return 0


def _import_secret(args: argparse.Namespace) -> bytes | None:
    if args.import_key is not None:
        text = args.import_key.removeprefix("0x")
        try:
            raw = bytes.fromhex(text)
        except ValueError:
            raw = b""
        if len(raw) != 32:
            raise CliError("--import-key: expected 32 bytes as 64 hex digits (0x optional)",
                           "pass the account's private key, or use --import-keystore FILE",
                           USAGE)
        return raw
    if args.import_keystore is not None:
        from rigmesh.store.keys import KeyStoreError, read_keystore

        pw = secret("RIGMESH_KEYSTORE_PASSWORD", f"password of {args.import_keystore}")
        try:
            return read_keystore(args.import_keystore, pw)
        except KeyStoreError as exc:
            raise CliError(str(exc), "check the file and RIGMESH_KEYSTORE_PASSWORD", KEYS) from None
    return None


def cmd_init(args: argparse.Namespace) -> int:
    from rigmesh.store.keys import FAST, STANDARD, KeyStoreError

    s = settings.load(args)
    store = key_store(s)
    if store.exists():
        raise CliError(f"keys already exist in {store.directory}",
                       "use them (`rigmesh keys show`), or pass another --home", KEYS)
    account_secret = _import_secret(args)
    try:
        keys = store.create(password(), cost=FAST if args.light_kdf else STANDARD,
                            account_secret=account_secret)
    except (KeyStoreError, ValueError) as exc:
        raise CliError(f"cannot create the key store: {exc}", "check the key you imported",
                       KEYS) from None
    return _show(keys)


def cmd_show(args: argparse.Namespace) -> int:
    return _show(load_keys(settings.load(args)))


def cmd_export(args: argparse.Namespace) -> int:
    from rigmesh.store.keys import FAST, STANDARD, KeyStoreError

    s = settings.load(args)
    store = key_store(s)
    new = secret("RIGMESH_EXPORT_PASSWORD", "password for the exported file") \
        if args.new_password else None
    try:
        address = store.export_account(password(), args.keystore, new_password=new,
                                       cost=FAST if args.light_kdf else STANDARD)
    except KeyStoreError as exc:
        raise CliError(str(exc), "check RIGMESH_PASSWORD, --home and the output path",
                       KEYS) from None
    print(f"account 0x{address.hex()} written to {args.keystore} (Ethereum keystore v3)")
    return 0


def _init_flags(p: argparse.ArgumentParser) -> None:
    group = p.add_mutually_exclusive_group()
    group.add_argument("--import-key", metavar="HEX",
                       help="use this Ethereum private key as the account (64 hex digits)")
    group.add_argument("--import-keystore", type=Path, metavar="FILE",
                       help="use the account in this keystore v3 JSON file (any wallet's "
                       "export); its password from RIGMESH_KEYSTORE_PASSWORD or asked")
    p.add_argument("--light-kdf", action="store_true",
                   help="cheap key derivation, for throwaway test and demo keys only (like geth's)")
    p.set_defaults(func=cmd_init)


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    init_help = "create the node's peer key and Ethereum account (encrypted key store)"
    description = (init_help + ". The password comes from RIGMESH_PASSWORD, or is asked. "
                   "The store lives in <home>/keys.")
    _init_flags(sub.add_parser("init", help=init_help, description=description,
                               parents=[common]))
    keys = sub.add_parser("keys", help="the node's encrypted key store", parents=[common])
    keys_sub = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    _init_flags(keys_sub.add_parser("init", help="the same as `rigmesh init`",
                                    description=description, parents=[common]))
    keys_sub.add_parser("show", help="print the peer id and account address",
                        parents=[common]).set_defaults(func=cmd_show)
    export = keys_sub.add_parser(
        "export", parents=[common], help="write the account as keystore v3 JSON (any wallet)",
        description="Write the node's Ethereum account as a keystore v3 file, which MetaMask, "
        "geth, Foundry's cast and other wallets import. Encrypted with the key store's "
        "password unless --new-password.")
    export.add_argument("--keystore", type=Path, required=True, metavar="FILE",
                        help="the file to write (never overwritten)")
    export.add_argument("--new-password", action="store_true",
                        help="encrypt with another password (RIGMESH_EXPORT_PASSWORD, or asked)")
    export.add_argument("--light-kdf", action="store_true",
                        help="cheap key derivation (tests only)")
    export.set_defaults(func=cmd_export)
