"""`rigmesh config show [--json]` and `rigmesh config set KEY VALUE`."""

from __future__ import annotations

import argparse

from rigmesh.cli import settings
from rigmesh.cli.common import print_json


def cmd_show(args: argparse.Namespace) -> int:
    s = settings.load(args)
    rows = s.rows()
    if args.json:
        print_json({"path": str(s.path), "settings": rows})
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"config file: {s.path}", title_justify="left")
    for column in ("key", "value", "source"):
        table.add_column(column, overflow="fold")
    for row in rows:
        value = row["value"]
        table.add_row(row["key"], "(unset)" if value is None else str(value), row["source"])
    Console(width=140).print(table)
    return 0


def cmd_set(args: argparse.Namespace) -> int:
    path = settings.config_path(args)
    settings.write(path, {args.key: args.value})
    print(f"{args.key} set in {path}")
    return 0


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    keys = ", ".join(settings.BY_NAME)
    config = sub.add_parser(
        "config", help="show or change the configuration", parents=[common],
        description="Settings come from flags, then RIGMESH_<SECTION>_<KEY> environment "
        "variables, then the TOML config file, then defaults. Keys: " + keys)
    config_sub = config.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    show = config_sub.add_parser("show", parents=[common],
                                 help="every effective value and where it came from")
    show.add_argument("--json", action="store_true", help="machine-readable output")
    show.set_defaults(func=cmd_show)
    set_ = config_sub.add_parser(
        "set", parents=[common], help="write one key to the config file",
        description="Write KEY = VALUE to the config file (checked first). Lists (node.listen, "
        "node.bootstrap) are given comma-separated. Keys: " + keys)
    set_.add_argument("key", metavar="KEY", help="section.name, e.g. chain.rpc")
    set_.add_argument("value", metavar="VALUE")
    set_.set_defaults(func=cmd_set)
