"""The `rigmesh` command."""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from pathlib import Path

from rigmesh.store.keys import FAST, STANDARD, KeyStore, KeyStoreError, NodeKeys
from rigmesh.wire import identity

DEFAULT_HOME = Path(os.environ.get("RIGMESH_HOME", Path.home() / ".rigmesh"))


def _password(args: argparse.Namespace) -> str:
    env = os.environ.get("RIGMESH_PASSWORD")
    if env is not None:
        return env
    if not sys.stdin.isatty():
        raise SystemExit("rigmesh: set RIGMESH_PASSWORD or run from a terminal to enter it")
    return getpass.getpass("key store password: ")


def _show(keys: NodeKeys) -> int:
    print(f"peer id  {identity.peer_id_to_text(keys.peer.peer_id)}")
    print(f"account  0x{keys.account.address.hex()}")
    return 0


def cmd_keys_init(args: argparse.Namespace) -> int:
    store = KeyStore(args.home / "keys")
    try:
        return _show(store.create(_password(args), cost=FAST if args.light_kdf else STANDARD))
    except KeyStoreError as exc:
        print(f"rigmesh: {exc}", file=sys.stderr)
        return 1


def cmd_keys_show(args: argparse.Namespace) -> int:
    try:
        return _show(KeyStore(args.home / "keys").load(_password(args)))
    except KeyStoreError as exc:
        print(f"rigmesh: {exc}", file=sys.stderr)
        return 1


def cmd_demo(args: argparse.Namespace) -> int:
    from rigmesh.demo import main as demo_main

    return demo_main()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rigmesh", description=__doc__)
    p.add_argument("--home", type=Path, default=DEFAULT_HOME, help="node directory (~/.rigmesh)")
    sub = p.add_subparsers(dest="command", required=True)

    keys = sub.add_parser("keys", help="the node's encrypted key store")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    init = keys_sub.add_parser("init", help="create a peer key and an Ethereum account")
    init.add_argument(
        "--light-kdf", action="store_true",
        help="cheap key derivation, for throwaway test and demo keys only (like geth's)",
    )
    init.set_defaults(func=cmd_keys_init)
    keys_sub.add_parser("show", help="print the PeerId and account address").set_defaults(
        func=cmd_keys_show
    )

    sub.add_parser("demo", help="provider and renter on loopback, end to end").set_defaults(
        func=cmd_demo
    )
    sub.add_parser("sim", help="the research simulator (rigmesh sim --help)", add_help=False)
    return p


def cmd_sim(argv: list[str]) -> int:
    # The simulator lives in the repository's simulations/ (not in the installed package), so
    # this works from a source checkout with the dev install (pip install -e '.[sim]').
    root = Path(__file__).resolve().parents[2] / "simulations"
    if not (root / "rigsim").is_dir():
        raise SystemExit("rigmesh sim: needs a source checkout (simulations/ not found)")
    sys.path.insert(0, str(root))
    from rigsim.cli import main as sim_main

    return sim_main(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["sim"]:  # everything after `sim` is the simulator's to parse
        return cmd_sim(argv[1:])
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
