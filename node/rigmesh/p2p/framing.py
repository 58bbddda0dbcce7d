"""Framing and error frames of the direct protocols (spec/p2p.md, "Framing").

libp2p streams are byte streams: a message is an unsigned LEB128 varint length followed by that
many bytes of canonical CBOR. The length is checked against the limit before anything is read
past it, so a peer cannot make us buffer more than the limit.

A request that fails is answered with an error frame ``{v: 1, kind: "error", code, detail}``
(code: `rigmesh.wire.errors.ErrorCode`) instead of a response, and the stream ends as after one.
"""

from __future__ import annotations

from typing import Any, Protocol

from rigmesh.wire import cbor, fields
from rigmesh.wire.errors import ErrorCode, Malformed, TooLarge, WireError
from rigmesh.wire.message import PROTOCOL_VERSION, open_envelope

ERROR_KIND = "error"
MAX_DETAIL = 256
#: Codes are 16-bit (messages.cddl `error-frame`).
MAX_ERROR_CODE = 0xFFFF
#: A varint of a length below 2**63 needs at most 9 bytes; longer prefixes are garbage.
MAX_VARINT_BYTES = 9
_ERROR_KEYS = frozenset({"v", "kind", "code", "detail"})
_MAX_ERROR_FRAME = 512


class ByteReader(Protocol):
    async def read(self, n: int) -> bytes: ...


def encode_varint(n: int) -> bytes:
    if n < 0:
        raise ValueError("varint of a negative number")
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def frame(payload: bytes) -> bytes:
    return encode_varint(len(payload)) + payload


async def read_exactly(stream: ByteReader, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = await stream.read(n - len(buf))
        if not chunk:
            raise Malformed(f"stream ended after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


async def read_frame(stream: ByteReader, max_size: int) -> bytes:
    """Read one length-prefixed frame; TooLarge before reading a body over `max_size`."""
    n = 0
    for i in range(MAX_VARINT_BYTES + 1):
        if i == MAX_VARINT_BYTES:
            raise Malformed("length prefix too long")
        b = (await read_exactly(stream, 1))[0]
        n |= (b & 0x7F) << (7 * i)
        if not b & 0x80:
            if i and b == 0:
                raise Malformed("length prefix not minimal")
            break
    if n > max_size:
        raise TooLarge(f"frame of {n} bytes > limit {max_size}")
    return await read_exactly(stream, n)


def encode_error(code: ErrorCode, detail: str) -> bytes:
    # Detail is for humans; truncate on a character boundary so the frame stays valid UTF-8.
    d = detail.encode()[:MAX_DETAIL].decode(errors="ignore")
    return cbor.encode({"v": PROTOCOL_VERSION, "kind": ERROR_KIND, "code": int(code), "detail": d})


def error_frame_for(exc: WireError) -> bytes:
    return encode_error(exc.code, exc.detail)


def is_error_frame(data: bytes) -> bool:
    """Cheap test before a full decode: an error frame is a 4-entry map whose "kind" is "error".
    Only used to route; `raise_if_error` decodes strictly."""
    return len(data) <= _MAX_ERROR_FRAME and b"\x64kind\x65error" in data


def decode_error(data: bytes) -> WireError:
    """The typed error an error frame carries (unknown codes map to plain `WireError`)."""
    m = open_envelope(data, max_size=_MAX_ERROR_FRAME, kinds=frozenset({ERROR_KIND}))
    fields.exact_keys(m, _ERROR_KEYS, "error")
    code = fields.uint(m, "code", high=MAX_ERROR_CODE)
    detail = fields.text(m, "detail", max_len=MAX_DETAIL)
    try:
        err = WireError.for_code(ErrorCode(code), f"peer: {detail}")
    except ValueError:
        err = WireError(f"peer: unknown error code {code}: {detail}")
    err.from_peer = True
    return err


def raise_if_error(data: bytes) -> bytes:
    """Return a response as is, or raise the typed error it carries."""
    if is_error_frame(data):
        try:
            err = decode_error(data)
        except WireError:
            return data  # not an error frame after all; the caller's decoder will judge it
        raise err
    return data


def envelope(kind: str, body: dict[str, Any]) -> bytes:
    """Encode a message of `kind` with `body` (canonical order is applied by the encoder)."""
    return cbor.encode({"v": PROTOCOL_VERSION, "kind": kind, **body})
