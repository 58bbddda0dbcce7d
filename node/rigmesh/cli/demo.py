"""`rigmesh demo`: the one-process demo (rigmesh.demo)."""

from __future__ import annotations

import argparse


def cmd_demo(args: argparse.Namespace) -> int:
    from rigmesh.demo import main as demo_main

    return demo_main()


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    sub.add_parser("demo", help="provider and renter on loopback, end to end, in one process",
                   parents=[common]).set_defaults(func=cmd_demo)
