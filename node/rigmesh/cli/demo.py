"""`rigmesh demo [ARGS]`: the demo (rigmesh.demo), which parses its own flags."""

from __future__ import annotations

import argparse


def run_demo(rest: list[str]) -> int:
    """The demo with exactly its own arguments (`rigmesh demo ...` hands them over unparsed)."""
    import inspect

    from rigmesh.demo import main as demo_main

    # A demo without flags of its own has a main() without an argv parameter.
    takes_argv = bool(inspect.signature(demo_main).parameters)
    return int(demo_main(rest) if takes_argv else demo_main())


def cmd_demo(args: argparse.Namespace) -> int:
    return run_demo([*args.demo_args, *(["--", *args.rest] if args.rest else [])])


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("demo", add_help=False,
                       help="the end-to-end demo on this machine (rigmesh demo --help)")
    p.add_argument("demo_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_demo)
