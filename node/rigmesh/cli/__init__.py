"""The `rigmesh` command.

Each command group is a module of this package with
``register(sub, common) -> None``: it adds its parsers to `sub` (with `common`, the parent parser
carrying the shared settings flags, as a parent) and sets ``func`` on them, a function of the
parsed arguments that returns an exit code or raises `CliError`. `MODULES` is the one list of
them; a module that is not there (yet) is skipped.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from rigmesh.cli import exits
from rigmesh.cli.exits import CliError
from rigmesh.cli.settings import add_flags

#: Command modules, in the order `rigmesh --help` lists them.
MODULES = (
    "rigmesh.cli.config", "rigmesh.cli.keys", "rigmesh.cli.devnet", "rigmesh.cli.provide",
    "rigmesh.cli.offers", "rigmesh.cli.rent", "rigmesh.cli.rentals", "rigmesh.cli.wallet",
    "rigmesh.cli.demo",
)

DESCRIPTION = """\
Rigmesh: rent GPUs from peers, or rent yours out, paid through one escrow contract.

  rigmesh init                      create the node's keys
  rigmesh devnet --write-config     a local chain to try it on (anvil)
  rigmesh provide --price-per-hour 3.60 --region DE
  rigmesh offers 'gpu_name=H100 dph<3'
  rigmesh rent 'gpu_name=H100' --duration 1h -- python train.py
"""


class Parser(argparse.ArgumentParser):
    """argparse, with its usage errors in the form of every other error (what, then what to
    do) and the usage exit code."""

    def error(self, message: str) -> NoReturn:
        where = self.prog.removeprefix("rigmesh").strip()
        raise CliError(f"{where}: {message}" if where else message, f"see `{self.prog} --help`",
                       exits.USAGE)


def _modules() -> list[Any]:
    found = []
    for name in MODULES:
        try:
            found.append(importlib.import_module(name))
        except ModuleNotFoundError as exc:
            if exc.name != name:  # the module exists but something it imports does not
                raise
    return found


def build_parser() -> argparse.ArgumentParser:
    common = Parser(add_help=False)
    add_flags(common)
    p = Parser(prog="rigmesh", description=DESCRIPTION, parents=[common],
               formatter_class=argparse.RawDescriptionHelpFormatter, epilog=exits.describe())
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND",
                           parser_class=Parser)
    for module in _modules():
        module.register(sub, common)
    sub.add_parser("sim", help="the research simulator (rigmesh sim --help)", add_help=False)
    return p


def cmd_sim(argv: list[str]) -> int:
    # The simulator lives in the repository's simulations/ (not in the installed package), so
    # this works from a source checkout with the dev install (pip install -e '.[sim]').
    root = Path(__file__).resolve().parents[3] / "simulations"
    if not (root / "rigsim").is_dir():
        raise CliError("rigmesh sim needs a source checkout (simulations/ not found)",
                       "clone the repository and pip install -e '.[sim]'", exits.FAILURE)
    sys.path.insert(0, str(root))
    from rigsim.cli import main as sim_main

    return int(sim_main(argv))


def run(argv: list[str]) -> int:
    if argv[:1] == ["sim"]:  # everything after `sim` is the simulator's to parse
        return cmd_sim(argv[1:])
    # Everything after the first `--` is a job's command line (`rigmesh rent ... -- cmd args`).
    rest: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, rest = argv[:i], argv[i + 1:]
    args = build_parser().parse_args(argv)
    args.rest = rest
    func: Callable[[argparse.Namespace], int] = args.func
    return int(func(args) or 0)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        return run(argv)
    except CliError as exc:
        print(exc.render(), file=sys.stderr, flush=True)
        return exc.code
    except KeyboardInterrupt:
        print("rigmesh: interrupted", file=sys.stderr)
        return exits.INTERRUPTED
