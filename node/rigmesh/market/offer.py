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
from typing import Any, NamedTuple, TypeVar

from rigmesh.wire import cbor, eip712, fields, identity
from rigmesh.wire.cid import message_cid
from rigmesh.wire.errors import BadSignature, Expired, InvalidField, NotYetValid, WrongChain
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
MAX_LISTING = 255
MAX_CPU_CORES = 4096
MAX_RAM_MIB = 2**40
MAX_DISK_GIB = 2**32
MAX_BANDWIDTH_MBPS = 2**32
MAX_HEARTBEAT_SECONDS = 3600
#: Sizes of the fixed-size byte fields: an Ethereum address, its ECDSA signature (r, s, v), an
#: Ed25519 signature.
ADDRESS_SIZE, ETH_SIG_SIZE, SIG_SIZE = 20, 65, 64

#: What a provider's job runner confines a renter's job with, weakest first (the ``isolation``
#: field; rigmesh.exec.Isolation gives the same values): no confinement (the node's own user);
#: its own namespaces (mount, PID, network, user, IPC, UTS) with limits polled; namespaces with
#: kernel-enforced cgroup limits.
ISOLATION_LEVELS = ("none", "namespaces", "namespaces+cgroup")
MAX_ISOLATION_LEN = 32

#: Every valid country field: two upper-case ASCII letters.
_COUNTRIES = frozenset(a + b for a in string.ascii_uppercase for b in string.ascii_uppercase)
#: Limits of a GPU group's fields (`Gpu.from_wire` and `_accept_gpu` both read them here).
MAX_VRAM_MIB = 2**32
MAX_GPU_COUNT = 64
MAX_CC_LEN, MAX_DRIVER_LEN, MAX_CUDA_LEN = 8, 32, 16
#: Builds a NamedTuple from a tuple of its fields without the generated ``__new__``'s Python
#: call (about half the cost of `Offer(...)`); used where the fields were just validated.
_tuple_new = tuple.__new__
_T = TypeVar("_T", bound=tuple[Any, ...])

_OFFER_KEYS = frozenset(
    {
        "v", "kind", "provider", "listing", "payee", "payee_sig", "gpu", "cpu_cores", "ram_mib",
        "disk_gib", "bandwidth_mbps", "region", "price", "chain_id", "token", "escrow",
        "min_seconds", "max_seconds", "interruptible", "heartbeat_seconds", "capacity", "seq",
        "issued", "expires", "isolation", "sig",
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
        """The strict read of an offer's ``gpu`` map (`_accept_gpu` is the fast one)."""
        fields.exact_keys(m, _GPU_KEYS, "gpu")
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
        """The strict read of an offer's ``region`` map (`_accept_region` is the fast one)."""
        fields.exact_keys(m, _REGION_KEYS, "region")
        country = fields.text(m, "country", max_len=2)
        if country not in _COUNTRIES:
            raise InvalidField("region.country: expected two upper-case letters")
        return cls(country=country, zone=fields.text(m, "zone", max_len=MAX_TEXT))


#: One shared instance of each GPU group and region accepted (offers repeat a handful of them).
#: NamedTuples stay tracked by the cyclic GC for life, and every collection while the book grows
#: walks them all: sharing them makes ingest cheaper by more than the lookup. Only values that
#: passed the checks go in, so the fast accept takes a hit of exactly the same types as an equal,
#: valid value without checking it again (bounded; clearing is fine).
_GPUS: dict[tuple[Any, ...], Gpu] = {}
_REGIONS: dict[tuple[Any, ...], Region] = {}
_SHARED_MAX = 4096


def _share(table: dict[tuple[Any, ...], _T], value: _T) -> _T:
    if len(table) >= _SHARED_MAX:
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
    #: How the provider confines renters' jobs (`ISOLATION_LEVELS`).
    isolation: str = "none"

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
            "isolation": self.isolation,
        }

    def sign(self, key: identity.PeerKey) -> SignedOffer:
        if key.peer_id != self.provider:
            raise ValueError("an offer is signed by its own provider's key")
        m = self.unsigned_wire()
        sig = key.sign(signing_input(m))
        m["sig"] = sig
        return SignedOffer(offer=self, sig=sig, encoded=cbor.encode(m))


class SignedOffer(NamedTuple):
    """An offer with its signature and the canonical bytes that carry both. A NamedTuple, like
    `Offer`: a book builds one per offer it takes in, and a frozen dataclass costs four times
    as much to build."""

    offer: Offer
    sig: bytes
    #: The canonical encoding as received or produced: gossip and sync forward these bytes as is.
    encoded: bytes

    @property
    def cid(self) -> str:
        """The offer's message id (computed on use: ingest does not need it)."""
        return message_cid(self.encoded)

    def __repr__(self) -> str:
        return f"SignedOffer(offer={self.offer!r}, sig={self.sig.hex()[:16]}…)"


def bind_payee(peer_id: bytes, payee_key: eip712.EthKey) -> bytes:
    """The payee's one-time EIP-712 signature vouching for `peer_id` (goes into every offer)."""
    return payee_key.sign_digest(eip712.PeerBinding(peer_id, payee_key.address).digest())


class BindingCache:
    """Remembers verified (PeerId, payee, signature) bindings.

    Every offer of a provider carries the same binding; recovering it costs about as much as the
    whole rest of an offer's ingest, so each distinct binding is recovered once. Keyed by the
    signature, which holds the (PeerId, payee) it was verified for. Bounded: past `capacity` the
    oldest binding goes first (its provider's next offer pays one recover again).
    """

    def __init__(self, capacity: int = 65536) -> None:
        self._seen: dict[bytes, tuple[bytes, bytes]] = {}
        self._capacity = capacity

    def check(self, peer_id: bytes, payee: bytes, sig: bytes) -> None:
        held = self._seen.get(sig)
        if held is not None and held[0] == peer_id and held[1] == payee:
            return
        eip712.verify_signer(eip712.PeerBinding(peer_id, payee).digest(), sig, payee)
        if held is None and len(self._seen) >= self._capacity:
            del self._seen[next(iter(self._seen))]
        self._seen[sig] = (peer_id, payee)


#: (key, low, high) of every unsigned integer field of an offer, as the strict path reads them.
_UINT_FIELDS = (
    ("listing", 0, MAX_LISTING),
    ("cpu_cores", 0, MAX_CPU_CORES),
    ("ram_mib", 0, MAX_RAM_MIB),
    ("disk_gib", 0, MAX_DISK_GIB),
    ("bandwidth_mbps", 0, MAX_BANDWIDTH_MBPS),
    ("chain_id", 1, fields.U64_MAX),
    ("min_seconds", 1, fields.U64_MAX),
    ("max_seconds", 1, fields.U64_MAX),
    ("heartbeat_seconds", 1, MAX_HEARTBEAT_SECONDS),
    ("capacity", 0, MAX_CAPACITY),
    ("seq", 0, fields.U64_MAX),
    ("issued", 0, fields.U64_MAX),
    ("expires", 0, fields.U64_MAX),
)


#: The fixed-size byte fields of an offer and their sizes.
_BYTES_SIZE = {
    "provider": identity.PEER_ID_SIZE, "payee": ADDRESS_SIZE, "payee_sig": ETH_SIG_SIZE,
    "token": ADDRESS_SIZE, "escrow": ADDRESS_SIZE, "sig": SIG_SIZE,
}


def parse_offer(m: dict[str, Any]) -> tuple[Offer, bytes]:
    """The offer and its signature from an opened envelope: `_accept_offer` where it accepts,
    else `parse_offer_strict`, which decides (and names) every refusal."""
    return _accept_offer(m) or parse_offer_strict(m)


def parse_offer_strict(m: dict[str, Any]) -> tuple[Offer, bytes]:
    """The reference read: each field by its strict reader, in this order, so the first fault
    is the one reported. `parse_offer` gives the same result and the same error for every input
    (tests/wire/test_fuzz.py and tests/market/test_offer_parse.py hold it to that)."""
    fields.exact_keys(m, _OFFER_KEYS, "offer")
    uints = {key: fields.uint(m, key, low=low, high=high) for key, low, high in _UINT_FIELDS}
    size = _BYTES_SIZE
    provider, payee, payee_sig = (
        fields.fixed_bytes(m, key, size[key]) for key in ("provider", "payee", "payee_sig")
    )
    gpu = None if m["gpu"] is None else Gpu.from_wire(fields.mapping(m, "gpu"))
    region = Region.from_wire(fields.mapping(m, "region"))
    price = fields.amount(m, "price")
    token, escrow = (fields.fixed_bytes(m, key, size[key]) for key in ("token", "escrow"))
    interruptible = fields.boolean(m, "interruptible")
    isolation = fields.text(m, "isolation", min_len=1, max_len=MAX_ISOLATION_LEN)
    sig = fields.fixed_bytes(m, "sig", size["sig"])
    offer = Offer(
        provider=provider, payee=payee, payee_sig=payee_sig, gpu=gpu, region=region,
        price_per_second=price, token=token, escrow=escrow, interruptible=interruptible,
        isolation=isolation, **uints,
    )
    _check_rules(offer)
    return offer, sig


def _check_rules(offer: Offer) -> None:
    """The rules across fields, checked once every field has passed its own reader."""
    identity.public_key_from_peer_id(offer.provider)
    if offer.price_per_second == 0:
        raise InvalidField("price: must be positive")
    if offer.min_seconds > offer.max_seconds:
        raise InvalidField("min_seconds > max_seconds")
    if not offer.issued < offer.expires <= offer.issued + MAX_OFFER_TTL:
        raise InvalidField(f"expires must be within (issued, issued + {MAX_OFFER_TTL}]")
    if offer.cpu_cores == 0 and offer.gpu is None:
        raise InvalidField("an offer rents out at least a GPU or a CPU core")
    if offer.isolation not in ISOLATION_LEVELS:
        raise InvalidField(f"isolation: {offer.isolation!r} is not one of {ISOLATION_LEVELS}")


# -- The fast accept -----------------------------------------------------------------------------
# The same checks as the strict readers, written out for the usual offer: one C call fetches
# every value, one tuple comparison checks their types, one expression their ranges, sizes and
# the cross-field rules. It only accepts: on any doubt it returns None, and the strict readers
# above decide, and name, the refusal. The limits are the named constants both paths read;
# tests/market/test_offer_parse.py walks every limit's edges through both paths.

#: The wire keys of an offer's fields in `Offer`'s order (the wire says "price" for
#: price_per_second), then the envelope's and the signature's.
_KEYS_IN_OFFER_ORDER = (
    *("price" if name == "price_per_second" else name for name in Offer._fields), "sig", "v",
    "kind",
)
_values_of = operator.itemgetter(*_KEYS_IN_OFFER_ORDER)
_WIRE_TYPE: dict[str, type] = {
    **{key: int for key, _, _ in _UINT_FIELDS},
    **{key: bytes for key in _BYTES_SIZE},
    "v": int, "kind": str, "gpu": dict, "region": dict, "price": bytes, "interruptible": bool,
    "isolation": str,
}
_TYPES_WITH_GPU = tuple(_WIRE_TYPE[key] for key in _KEYS_IN_OFFER_ORDER)
_TYPES_WITHOUT_GPU = tuple(
    type(None) if key == "gpu" else _WIRE_TYPE[key] for key in _KEYS_IN_OFFER_ORDER
)
_U64_MAX = fields.U64_MAX
#: Each isolation level by itself, so accepted offers share one string object per level.
_ISOLATIONS = {level: level for level in ISOLATION_LEVELS}
_PEER_ID_PREFIX = identity.PEER_ID_PREFIX
_PEER_ID_SIZE = identity.PEER_ID_SIZE


def _accept_offer(m: dict[str, Any]) -> tuple[Offer, bytes] | None:
    if len(m) != len(_OFFER_KEYS):
        return None
    try:
        values = _values_of(m)  # with every key present and no other, the key set is exact
    except KeyError:
        return None
    types = tuple(map(type, values))
    if types != _TYPES_WITH_GPU and types != _TYPES_WITHOUT_GPU:
        return None
    (
        provider, listing, payee, payee_sig, gpu, cpu_cores, ram_mib, disk_gib, bandwidth_mbps,
        region, price, chain_id, token, escrow, min_seconds, max_seconds, interruptible,
        heartbeat_seconds, capacity, seq, issued, expires, isolation, sig, _, _,
    ) = values
    if not (
        0 <= listing <= MAX_LISTING and 0 <= cpu_cores <= MAX_CPU_CORES
        and 0 <= ram_mib <= MAX_RAM_MIB and 0 <= disk_gib <= MAX_DISK_GIB
        and 0 <= bandwidth_mbps <= MAX_BANDWIDTH_MBPS and 1 <= chain_id <= _U64_MAX
        and 1 <= min_seconds <= max_seconds <= _U64_MAX
        and 1 <= heartbeat_seconds <= MAX_HEARTBEAT_SECONDS and 0 <= capacity <= MAX_CAPACITY
        and 0 <= seq <= _U64_MAX and 0 <= issued < expires <= issued + MAX_OFFER_TTL
        and expires <= _U64_MAX
        and len(provider) == _PEER_ID_SIZE and provider.startswith(_PEER_ID_PREFIX)
        and len(payee) == ADDRESS_SIZE and len(payee_sig) == ETH_SIG_SIZE
        and len(token) == ADDRESS_SIZE and len(escrow) == ADDRESS_SIZE and len(sig) == SIG_SIZE
        and 0 < len(price) <= 32 and price[0]  # positive, no leading zero byte
        and (cpu_cores or gpu is not None) and isolation in _ISOLATIONS
    ):
        return None
    region = _accept_region(region)
    if region is None or (gpu is not None and (gpu := _accept_gpu(gpu)) is None):
        return None
    offer: Offer = _tuple_new(  # every field was just checked: skip the generated __new__
        Offer,
        (
            provider, listing, payee, payee_sig, gpu, cpu_cores, ram_mib, disk_gib,
            bandwidth_mbps, region, int.from_bytes(price, "big"), chain_id, token, escrow,
            min_seconds, max_seconds, interruptible, heartbeat_seconds, capacity, seq, issued,
            expires, _ISOLATIONS[isolation],
        ),
    )
    return offer, sig


_gpu_fields = operator.itemgetter(*Gpu._fields)
_region_fields = operator.itemgetter(*Region._fields)


def _accept_gpu(m: dict[str, Any]) -> Gpu | None:
    """The usual GPU group: exact types, in range, ASCII text (whose UTF-8 length is its
    length). Anything else, non-ASCII text that fits included, is left to `Gpu.from_wire`."""
    if len(m) != len(_GPU_KEYS):
        return None
    try:
        gpu = _gpu_fields(m)
    except KeyError:
        return None
    model, vram_mib, count, cc, driver, cuda = gpu
    if not (
        type(model) is str and type(cc) is str and type(driver) is str and type(cuda) is str
        and type(vram_mib) is int and type(count) is int
    ):
        return None
    held = _GPUS.get(gpu)
    if held is not None:
        return held
    if (
        1 <= vram_mib <= MAX_VRAM_MIB and 1 <= count <= MAX_GPU_COUNT
        and 1 <= len(model) <= MAX_TEXT and len(cc) <= MAX_CC_LEN
        and len(driver) <= MAX_DRIVER_LEN and len(cuda) <= MAX_CUDA_LEN
        and model.isascii() and cc.isascii() and driver.isascii() and cuda.isascii()
    ):
        return _share(_GPUS, _tuple_new(Gpu, gpu))
    return None


def _accept_region(m: dict[str, Any]) -> Region | None:
    """A valid country code and a short ASCII zone; anything else is `Region.from_wire`'s."""
    if len(m) != len(_REGION_KEYS):
        return None
    try:
        region = _region_fields(m)
    except KeyError:
        return None
    country, zone = region
    if not (type(country) is str and type(zone) is str):
        return None
    held = _REGIONS.get(region)
    if held is not None:
        return held
    if country in _COUNTRIES and len(zone) <= MAX_TEXT and zone.isascii():
        return _share(_REGIONS, _tuple_new(Region, region))
    return None


def _shape() -> cbor.Shape:
    """The layout of every valid offer (`cbor.Shape`): what the fast path may hand to cbrrr. Built
    from the field tables above, so it cannot drift from the parsers; sizes as the readers check
    them, integer ranges left to them."""
    text, uint = cbor.shape_text, cbor.SHAPE_UINT
    gpu = cbor.shape_map({
        "model": text(1, MAX_TEXT), "vram_mib": uint, "count": uint,
        "compute_capability": text(0, MAX_CC_LEN), "driver": text(0, MAX_DRIVER_LEN),
        "cuda": text(0, MAX_CUDA_LEN),
    })  # fmt: skip
    entries = {
        **{key: uint for key, _, _ in _UINT_FIELDS},
        **{key: cbor.shape_bytes(size) for key, size in _BYTES_SIZE.items()},
        "v": cbor.shape_literal(PROTOCOL_VERSION), "kind": cbor.shape_literal(KIND),
        "gpu": cbor.shape_either(cbor.SHAPE_NULL, gpu),
        "region": cbor.shape_map({"country": text(2), "zone": text(0, MAX_TEXT)}),
        "price": cbor.shape_bytes(1, 32), "interruptible": cbor.SHAPE_BOOL,
        "isolation": text(1, MAX_ISOLATION_LEN),
    }
    return cbor.Shape(cbor.shape_map(entries))


_SHAPE = _shape()


def check_domain(offer: Offer, chain_id: int | None, escrows: frozenset[bytes]) -> None:
    """WrongChain unless the offer is paid on `chain_id` (None: any chain) through one of the
    escrow contracts the receiver trusts: a renter would otherwise lock its deposit in a
    contract it never checked."""
    if chain_id is not None and offer.chain_id != chain_id:
        raise WrongChain(f"chain {offer.chain_id}, this book holds chain {chain_id}")
    if offer.escrow not in escrows:
        raise WrongChain(f"escrow 0x{offer.escrow.hex()} is not one this node trusts")


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
    m, (offer, sig) = open_typed(
        data, max_size=MAX_OFFER_SIZE, kind=KIND, shape=_SHAPE, parse=parse_offer
    )
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
