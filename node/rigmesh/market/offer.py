"""Offers: a provider's signed, gossiped statement of what it rents out, where, and for how much.

An offer is keyed by (provider, listing): a provider may publish several listings (say one GPU and
all eight), each with its own sequence number. A higher ``seq`` replaces the listing's earlier
offer; ``capacity`` 0 withdraws it; past ``expires`` it is gone. The provider's Ethereum payee key
vouches for the provider's PeerId once (``payee_sig``, EIP-712 `PeerBinding`), so escrow payments
go to an address the peer really controls.

Decoding is stateless (bytes + clock → `SignedOffer` or a typed error). Whether the offer is newer
than what a node already holds is the offer book's question (market/book.py).
"""

from __future__ import annotations

import operator
import string
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TypeVar

from rigmesh.wire import cbor, eip712, fields, identity
from rigmesh.wire.cid import message_cid
from rigmesh.wire.errors import BadSignature, Expired, InvalidField, Malformed, NotYetValid
from rigmesh.wire.message import (
    PROTOCOL_VERSION,
    open_typed,
    received_signing_input,
    signing_input,
)

KIND = "offer"
MAX_OFFER_SIZE = 2048
#: An offer may live at most this long; providers republish well before (p2p/gossip.py).
MAX_OFFER_TTL = 24 * 3600
#: How far in the future `issued` may be, to tolerate clock skew between peers.
MAX_CLOCK_SKEW = 120
MAX_CAPACITY = 1024
MAX_TEXT = 64

#: Every valid country field: two upper-case ASCII letters.
_COUNTRIES = frozenset(a + b for a in string.ascii_uppercase for b in string.ascii_uppercase)
#: Limits of a GPU group's fields (both paths of `Gpu.from_wire` read them from here).
MAX_VRAM_MIB = 2**32
MAX_GPU_COUNT = 64
MAX_CC_LEN, MAX_DRIVER_LEN, MAX_CUDA_LEN = 8, 32, 16
#: Builds a NamedTuple from a tuple of its fields without the generated ``__new__``'s Python
#: call (about half the cost of `Offer(...)`); used where the fields were just validated.
_tuple_new = tuple.__new__
_T = TypeVar("_T")

_OFFER_KEYS = frozenset(
    {
        "v", "kind", "provider", "listing", "payee", "payee_sig", "gpu", "cpu_cores", "ram_mib",
        "disk_gib", "bandwidth_mbps", "region", "price", "chain_id", "token", "escrow",
        "min_seconds", "max_seconds", "interruptible", "heartbeat_seconds", "capacity", "seq",
        "issued", "expires", "sig",
    }
)
_GPU_KEYS = frozenset({"model", "vram_mib", "count", "compute_capability", "driver", "cuda"})
_REGION_KEYS = frozenset({"country", "zone"})


class Gpu(NamedTuple):
    """One homogeneous group of GPUs, as NVML names them."""

    model: str
    vram_mib: int
    count: int
    compute_capability: str
    driver: str
    cuda: str

    def to_wire(self) -> dict[str, Any]:
        return {
            "model": self.model, "vram_mib": self.vram_mib, "count": self.count,
            "compute_capability": self.compute_capability, "driver": self.driver,
            "cuda": self.cuda,
        }

    @classmethod
    def from_wire(cls, m: dict[str, Any]) -> Gpu:
        fields.exact_keys(m, _GPU_KEYS, "gpu")
        model, vram_mib, count = m["model"], m["vram_mib"], m["count"]
        cc, driver, cuda = m["compute_capability"], m["driver"], m["cuda"]
        # Fast path for the usual GPU: exact types, in range, ASCII text (whose UTF-8 length is
        # its length). It only accepts; anything else takes the field readers below, which raise
        # the first fault in field order (or accept non-ASCII text that fits).
        if (
            type(model) is str and type(cc) is str and type(driver) is str and type(cuda) is str
            and type(vram_mib) is int and type(count) is int
            and 1 <= vram_mib <= MAX_VRAM_MIB and 1 <= count <= MAX_GPU_COUNT
            and 1 <= len(model) <= MAX_TEXT and len(cc) <= MAX_CC_LEN
            and len(driver) <= MAX_DRIVER_LEN and len(cuda) <= MAX_CUDA_LEN
            and model.isascii() and cc.isascii() and driver.isascii() and cuda.isascii()
        ):
            return _intern(_GPUS, _tuple_new(cls, (model, vram_mib, count, cc, driver, cuda)))
        return cls(
            model=fields.text(m, "model", min_len=1, max_len=MAX_TEXT),
            vram_mib=fields.uint(m, "vram_mib", low=1, high=MAX_VRAM_MIB),
            count=fields.uint(m, "count", low=1, high=MAX_GPU_COUNT),
            compute_capability=fields.text(m, "compute_capability", max_len=MAX_CC_LEN),
            driver=fields.text(m, "driver", max_len=MAX_DRIVER_LEN),
            cuda=fields.text(m, "cuda", max_len=MAX_CUDA_LEN),
        )


class Region(NamedTuple):
    """ISO 3166-1 alpha-2 country code plus a provider-chosen zone name."""

    country: str
    zone: str

    def to_wire(self) -> dict[str, Any]:
        return {"country": self.country, "zone": self.zone}

    @classmethod
    def from_wire(cls, m: dict[str, Any]) -> Region:
        fields.exact_keys(m, _REGION_KEYS, "region")
        country, zone = m["country"], m["zone"]
        # Fast path, as in `Gpu.from_wire`: a valid code and a short ASCII zone.
        if (
            type(country) is str and country in _COUNTRIES
            and type(zone) is str and len(zone) <= MAX_TEXT and zone.isascii()
        ):
            return _intern(_REGIONS, _tuple_new(cls, (country, zone)))
        country = fields.text(m, "country", max_len=2)
        if country not in _COUNTRIES:
            raise InvalidField("region.country: expected two upper-case letters")
        return cls(country=country, zone=fields.text(m, "zone", max_len=MAX_TEXT))


#: One shared instance of each GPU group and region seen (offers repeat a handful of them).
#: NamedTuples stay tracked by the cyclic GC for life, and every collection while the book grows
#: walks them all: sharing them makes ingest cheaper by more than the lookup. Only values that
#: passed the strict checks go in, so a hit is an equal, valid value (bounded; clearing is fine).
_GPUS: dict[Gpu, Gpu] = {}
_REGIONS: dict[Region, Region] = {}
_INTERN_MAX = 4096


def _intern(table: dict[_T, _T], value: _T) -> _T:
    held = table.get(value)
    if held is not None:
        return held
    if len(table) >= _INTERN_MAX:
        table.clear()
    table[value] = value
    return value


class Offer(NamedTuple):
    """The signed content of an offer. Prices are token base units per second, for the listing.

    Offer, Gpu and Region are NamedTuples rather than frozen dataclasses: equally immutable, and
    five times cheaper to build, which matters at tens of thousands of offers a second.
    """

    provider: bytes
    listing: int
    payee: bytes
    payee_sig: bytes
    gpu: Gpu | None
    cpu_cores: int
    ram_mib: int
    disk_gib: int
    bandwidth_mbps: int
    region: Region
    price_per_second: int
    chain_id: int
    token: bytes
    escrow: bytes
    min_seconds: int
    max_seconds: int
    interruptible: bool
    heartbeat_seconds: int
    capacity: int
    seq: int
    issued: int
    expires: int

    @property
    def key(self) -> tuple[bytes, int]:
        """What a newer offer replaces: one listing of one provider."""
        return (self.provider, self.listing)

    @property
    def gpu_count(self) -> int:
        return self.gpu.count if self.gpu else 0

    def unsigned_wire(self) -> dict[str, Any]:
        return {
            "v": PROTOCOL_VERSION,
            "kind": KIND,
            "provider": self.provider,
            "listing": self.listing,
            "payee": self.payee,
            "payee_sig": self.payee_sig,
            "gpu": self.gpu.to_wire() if self.gpu else None,
            "cpu_cores": self.cpu_cores,
            "ram_mib": self.ram_mib,
            "disk_gib": self.disk_gib,
            "bandwidth_mbps": self.bandwidth_mbps,
            "region": self.region.to_wire(),
            "price": fields.amount_to_wire(self.price_per_second),
            "chain_id": self.chain_id,
            "token": self.token,
            "escrow": self.escrow,
            "min_seconds": self.min_seconds,
            "max_seconds": self.max_seconds,
            "interruptible": self.interruptible,
            "heartbeat_seconds": self.heartbeat_seconds,
            "capacity": self.capacity,
            "seq": self.seq,
            "issued": self.issued,
            "expires": self.expires,
        }

    def sign(self, key: identity.PeerKey) -> SignedOffer:
        if key.peer_id != self.provider:
            raise ValueError("an offer is signed by its own provider's key")
        m = self.unsigned_wire()
        sig = key.sign(signing_input(m))
        m["sig"] = sig
        return SignedOffer(offer=self, sig=sig, encoded=cbor.encode(m))


@dataclass(frozen=True, slots=True)
class SignedOffer:
    offer: Offer
    sig: bytes
    #: The canonical encoding as received or produced: gossip and sync forward these bytes as is.
    encoded: bytes = field(repr=False)
    _cid: str | None = field(default=None, repr=False, compare=False)

    @property
    def cid(self) -> str:
        # Computed on first use (ingest does not need it); frozen, hence object.__setattr__.
        cid = self._cid
        if cid is None:
            cid = message_cid(self.encoded)
            object.__setattr__(self, "_cid", cid)
        return cid


def bind_payee(peer_id: bytes, payee_key: eip712.EthKey) -> bytes:
    """The payee's one-time EIP-712 signature vouching for `peer_id` (goes into every offer)."""
    return payee_key.sign_digest(eip712.PeerBinding(peer_id, payee_key.address).digest())


class BindingCache:
    """Remembers verified (PeerId, payee, signature) bindings.

    Every offer of a provider carries the same binding; recovering it costs about as much as the
    whole rest of an offer's ingest, so each distinct binding is recovered once. Bounded LRU.
    """

    def __init__(self, capacity: int = 65536) -> None:
        self._seen: OrderedDict[tuple[bytes, bytes, bytes], None] = OrderedDict()
        self._capacity = capacity

    def check(self, peer_id: bytes, payee: bytes, sig: bytes) -> None:
        k = (peer_id, payee, sig)
        if k in self._seen:
            self._seen.move_to_end(k)
            return
        eip712.verify_signer(eip712.PeerBinding(peer_id, payee).digest(), sig, payee)
        self._seen[k] = None
        if len(self._seen) > self._capacity:
            self._seen.popitem(last=False)


# (key, low, high) of every unsigned integer field of an offer, checked in one loop.
_UINT_FIELDS = (
    ("listing", 0, 255),
    ("cpu_cores", 0, 4096),
    ("ram_mib", 0, 2**40),
    ("disk_gib", 0, 2**32),
    ("bandwidth_mbps", 0, 2**32),
    ("chain_id", 1, fields.U64_MAX),
    ("min_seconds", 1, fields.U64_MAX),
    ("max_seconds", 1, fields.U64_MAX),
    ("heartbeat_seconds", 1, 3600),
    ("capacity", 0, MAX_CAPACITY),
    ("seq", 0, fields.U64_MAX),
    ("issued", 0, fields.U64_MAX),
    ("expires", 0, fields.U64_MAX),
)


#: The fixed-size byte fields of an offer and their sizes.
_BYTES_FIELDS = (
    ("provider", identity.PEER_ID_SIZE), ("payee", 20), ("payee_sig", 65), ("token", 20),
    ("escrow", 20), ("sig", 64),
)
_get_bytes = operator.itemgetter(*(key for key, _ in _BYTES_FIELDS))
_BYTES_SIZES = tuple(size for _, size in _BYTES_FIELDS)
_BYTES_SIZE = dict(_BYTES_FIELDS)
_ALL_BYTES = (bytes,) * len(_BYTES_FIELDS)


def parse_offer(m: dict[str, Any]) -> tuple[Offer, bytes]:
    """Field-by-field strict parse of an opened envelope; returns the offer and its signature."""
    fields.exact_keys(m, _OFFER_KEYS, "offer")
    for key, low, high in _UINT_FIELDS:
        v = m[key]
        if type(v) is not int:
            raise Malformed(f"{key}: expected unsigned integer")
        if not low <= v <= high:
            raise InvalidField(f"{key}: {v} outside [{low}, {high}]")
    blobs = _get_bytes(m)
    gpu_raw, region_raw, interruptible = m["gpu"], m["region"], m["interruptible"]
    # The byte, map and bool fields' types and sizes, checked at once. Should one be wrong,
    # `_refuse_fields` runs the field readers in wire order, so the first fault is the one
    # reported, as if each field were read in turn.
    if not (
        tuple(map(type, blobs)) == _ALL_BYTES
        and tuple(map(len, blobs)) == _BYTES_SIZES
        and (gpu_raw is None or type(gpu_raw) is dict)
        and type(region_raw) is dict
        and type(interruptible) is bool
    ):
        _refuse_fields(m)
    provider, payee, payee_sig, token, escrow, sig = blobs
    gpu = None if gpu_raw is None else Gpu.from_wire(gpu_raw)
    region = Region.from_wire(region_raw)
    price_raw = m["price"]
    if type(price_raw) is bytes and 0 < len(price_raw) <= 32 and price_raw[0]:
        price = int.from_bytes(price_raw, "big")  # the usual price; the reader decides the rest
    else:
        price = fields.amount(m, "price")
    offer: Offer = _tuple_new(  # every field was just checked: skip the generated __new__
        Offer,
        (
            provider, m["listing"], payee, payee_sig, gpu, m["cpu_cores"], m["ram_mib"],
            m["disk_gib"], m["bandwidth_mbps"], region, price, m["chain_id"], token, escrow,
            m["min_seconds"], m["max_seconds"], interruptible, m["heartbeat_seconds"],
            m["capacity"], m["seq"], m["issued"], m["expires"],
        ),
    )
    identity.public_key_from_peer_id(provider)
    if price == 0:
        raise InvalidField("price: must be positive")
    if offer.min_seconds > offer.max_seconds:
        raise InvalidField("min_seconds > max_seconds")
    if not offer.issued < offer.expires <= offer.issued + MAX_OFFER_TTL:
        raise InvalidField(f"expires must be within (issued, issued + {MAX_OFFER_TTL}]")
    if offer.cpu_cores == 0 and gpu is None:
        raise InvalidField("an offer rents out at least a GPU or a CPU core")
    return offer, sig


def _refuse_fields(m: dict[str, Any]) -> None:
    """Read the non-integer fields in wire order with the strict readers: raises the first
    fault (`parse_offer` calls this only when one of them is wrong)."""
    size = _BYTES_SIZE
    for key in ("provider", "payee", "payee_sig"):
        fields.fixed_bytes(m, key, size[key])
    if m["gpu"] is not None:
        Gpu.from_wire(fields.mapping(m, "gpu"))
    Region.from_wire(fields.mapping(m, "region"))
    fields.amount(m, "price")
    for key in ("token", "escrow"):
        fields.fixed_bytes(m, key, size[key])
    fields.boolean(m, "interruptible")
    fields.fixed_bytes(m, "sig", size["sig"])
    raise AssertionError("_refuse_fields found no fault")  # unreachable: a field was wrong


def check_time(offer: Offer, now: int) -> None:
    if now >= offer.expires:
        raise Expired(f"expired at {offer.expires}, now {now}")
    if offer.issued > now + MAX_CLOCK_SKEW:
        raise NotYetValid(f"issued at {offer.issued}, now {now}")




def read_offer(data: bytes, now: int) -> tuple[Offer, bytes, bytes]:
    """The cheap checks of an offer, everything but its signatures: TooLarge, Malformed,
    NotCanonical, UnknownVersion, UnknownKind, InvalidField, Expired or NotYetValid. Returns the
    offer, its signature and the signing input for `verify_offer`.

    Split from the verification so a book can put its own cheap checks (chain, seq) in between:
    a flood of replays then costs no signature checks."""
    # parse_offer checks the type of every value an offer has: it may skip cbor's type walk.
    m, (offer, sig) = open_typed(data, max_size=MAX_OFFER_SIZE, kind=KIND, parse=parse_offer)
    check_time(offer, now)
    return offer, sig, received_signing_input(data, m)


def verify_offer(offer: Offer, sig: bytes, signed: bytes, bindings: BindingCache) -> None:
    """BadSignature unless the provider's key signed `signed` (the signing input) and the payee
    binding holds."""
    identity.verify(identity.public_key_from_peer_id(offer.provider), signed, sig)
    try:
        bindings.check(offer.provider, offer.payee, offer.payee_sig)
    except BadSignature as exc:
        raise BadSignature(f"payee binding: {exc.detail}") from None


def decode_offer(data: bytes, now: int, bindings: BindingCache | None = None) -> SignedOffer:
    """Decode, validate and verify one offer (`read_offer`, then `verify_offer`)."""
    offer, sig, signed = read_offer(data, now)
    verify_offer(offer, sig, signed, bindings or BindingCache(1))
    return SignedOffer(offer=offer, sig=sig, encoded=bytes(data))
