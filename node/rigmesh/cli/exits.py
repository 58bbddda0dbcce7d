"""Exit codes scripts can rely on, and the error every command raises to end with one.

A command that fails raises `CliError(message, hint, code)`; `rigmesh.cli.main` prints it as

    rigmesh: <message>
      <hint: what to do about it>

on stderr and exits with `code`. The codes are stable (scripts test them); a new failure kind
gets a new number, an existing number never changes meaning.
"""

from __future__ import annotations

#: Success (for `rent`: the rental settled on chain).
OK = 0
#: Anything not listed below (a bug, an unexpected I/O error).
FAILURE = 1
#: Bad flags or arguments (argparse's own code), or a question that needed a terminal.
USAGE = 2
#: The configuration is wrong: an unknown key, a wrong type, a malformed address, a missing
#: setting the command needs.
CONFIG = 3
#: No offer matches the query.
NO_OFFER = 4
#: Not enough native gas token or rental token for what was asked.
FUNDS = 5
#: The rental would exceed a budget cap (per rental or per month).
BUDGET = 6
#: The chain is not the configured one (chain id), the escrow is not deployed at the configured
#: address, or the chain does not answer.
CHAIN = 7
#: The provider refused, never answered, or the negotiation failed.
PEER = 8
#: The key store is missing or damaged, or the password is wrong.
KEYS = 9
#: Stopped by Ctrl-C / SIGTERM before finishing (128 + SIGINT, as shells report it).
INTERRUPTED = 130

#: name -> code, for the docs and `rigmesh --help`.
CODES: dict[str, int] = {
    "OK": OK, "FAILURE": FAILURE, "USAGE": USAGE, "CONFIG": CONFIG, "NO_OFFER": NO_OFFER,
    "FUNDS": FUNDS, "BUDGET": BUDGET, "CHAIN": CHAIN, "PEER": PEER, "KEYS": KEYS,
    "INTERRUPTED": INTERRUPTED,
}


class CliError(Exception):
    """A failure the user can do something about: what went wrong, what to do, the exit code."""

    def __init__(self, message: str, hint: str = "", code: int = FAILURE) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.code = code

    def render(self) -> str:
        text = f"rigmesh: {self.message}"
        return f"{text}\n  {self.hint}" if self.hint else text


def describe() -> str:
    """The table of codes for `rigmesh --help`."""
    return "exit codes: " + ", ".join(f"{code} {name.lower()}" for name, code in CODES.items())
