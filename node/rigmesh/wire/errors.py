"""Typed errors with stable codes.

Every decoder and validator in the protocol core raises a `WireError` subclass and nothing else.
The code is what crosses the wire in an error frame and what spec/protocol.md tabulates, so codes
are append-only: never renumber one.

Following h11, an error the *remote* peer caused (`RemoteProtocolError`, the default for
`WireError`) counts against that peer's score; an error *we* caused is a bug and is raised as a
plain exception, loudly.
"""

from __future__ import annotations

from enum import IntEnum


class ErrorCode(IntEnum):
    """Stable error codes (spec/protocol.md, "Error codes")."""

    TooLarge = 1
    Malformed = 2
    NotCanonical = 3
    UnknownVersion = 4
    UnknownKind = 5
    BadSignature = 6
    Expired = 7
    Replayed = 8
    WrongChain = 9
    NotYetValid = 10
    InvalidField = 11
    RateLimited = 12
    Timeout = 13
    UnknownProtocol = 14
    Unavailable = 15
    Internal = 16


class WireError(Exception):
    """A message was rejected. `code` is stable; `detail` is for humans and logs only."""

    code: ErrorCode = ErrorCode.Internal

    def __init__(self, detail: str = "") -> None:
        super().__init__(f"{self.code.name}: {detail}" if detail else self.code.name)
        self.detail = detail

    @classmethod
    def for_code(cls, code: ErrorCode, detail: str = "") -> WireError:
        return _BY_CODE.get(code, WireError)(detail)


class TooLarge(WireError):
    code = ErrorCode.TooLarge


class Malformed(WireError):
    code = ErrorCode.Malformed


class NotCanonical(WireError):
    code = ErrorCode.NotCanonical


class UnknownVersion(WireError):
    code = ErrorCode.UnknownVersion


class UnknownKind(WireError):
    code = ErrorCode.UnknownKind


class BadSignature(WireError):
    code = ErrorCode.BadSignature


class Expired(WireError):
    code = ErrorCode.Expired


class Replayed(WireError):
    """Not newer than what we already hold (same or lower sequence number, or the same id)."""

    code = ErrorCode.Replayed


class WrongChain(WireError):
    code = ErrorCode.WrongChain


class NotYetValid(WireError):
    """Issued further in the future than the allowed clock skew."""

    code = ErrorCode.NotYetValid


class InvalidField(WireError):
    """Well-formed, but a value is out of its allowed range or contradicts another field."""

    code = ErrorCode.InvalidField


class RateLimited(WireError):
    code = ErrorCode.RateLimited


class Timeout(WireError):
    code = ErrorCode.Timeout


class UnknownProtocol(WireError):
    code = ErrorCode.UnknownProtocol


class Unavailable(WireError):
    code = ErrorCode.Unavailable


_BY_CODE: dict[ErrorCode, type[WireError]] = {
    c.code: c
    for c in (
        TooLarge, Malformed, NotCanonical, UnknownVersion, UnknownKind, BadSignature, Expired,
        Replayed, WrongChain, NotYetValid, InvalidField, RateLimited, Timeout, UnknownProtocol,
        Unavailable,
    )
}

RemoteProtocolError = WireError
