"""What a renter asks the offer book for: filters, a ranking, a limit.

`OfferQuery` holds the filters; `matches` is their one definition and `sort_key` the one definition
of each ranking. The indexed search (market/book.py) and the reference linear scan (`naive_query`,
used by tests and the benchmark to check the index) both call these two, so they cannot disagree
on what a filter means; the index only decides which offers it never has to look at.

Rankings (ascending, best first; ties broken by price, then by (provider, listing) so the order is
total and the same everywhere):

- ``Sort.PRICE``: price per second of the whole listing, in token base units.
- ``Sort.PRICE_PER_VRAM_GIB``: price per second per GiB of the listing's total VRAM
  (``vram_mib * count``), as ``floor(price * 1024 * 2**32 / total_vram_mib)`` (an exact integer
  with 32 fractional bits, so no float ever orders money). Offers without a GPU rank last.
- ``Sort.SCORE``: reputation-weighted price, the price the renter "feels":
  ``score = price * (2000 - reputation) / 2000``, with reputation in 0..1000 (market/reputation.py).
  A provider at 1000 competes at half its price, one at 0 at its full price, linearly between;
  at the default 500 an offer counts 0.75 of its price. The integer ``price * (2000 -
  reputation)`` orders identically and is what is compared.

Prices of offers in different tokens are not comparable: set ``token`` when ranking by price.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from rigmesh.market.offer import ISOLATION_LEVELS, MAX_TEXT, Offer, SignedOffer
from rigmesh.market.reputation import MAX_SCORE, MIN_SCORE, Reputation
from rigmesh.wire.errors import InvalidField

_ISOLATION_RANK = {level: rank for rank, level in enumerate(ISOLATION_LEVELS)}
#: A query returns at most this many offers (the CLI and the sync protocol page beyond).
MAX_LIMIT = 10_000
#: Fractional bits of the price-per-VRAM key.
PPV_SHIFT = 32
#: The price-per-VRAM key of an offer without a GPU: above any real key (price < 2**256).
NO_GPU_KEY = 1 << 320


class Sort(enum.StrEnum):
    PRICE = "price"
    PRICE_PER_VRAM_GIB = "price_per_vram_gib"
    SCORE = "score"


_NORMALIZED: dict[str, str] = {}


def normalize_model(name: str) -> str:
    """GPU model names compare case-insensitively with runs of whitespace folded:
    ``"NVIDIA  H100 80GB HBM3"`` -> ``"nvidia h100 80gb hbm3"``."""
    # Distinct model names are few and every filter pass asks again: remember them (bounded;
    # thousands of names means junk offers, so forgetting them all is fine).
    norm = _NORMALIZED.get(name)
    if norm is None:
        if len(_NORMALIZED) >= 4096:
            _NORMALIZED.clear()
        norm = _NORMALIZED[name] = " ".join(name.lower().split())
    return norm


def price_per_vram_key(offer: Offer) -> int:
    gpu = offer.gpu
    if gpu is None:
        return NO_GPU_KEY
    return (offer.price_per_second << (PPV_SHIFT + 10)) // (gpu.vram_mib * gpu.count)


def score_key(price: int, reputation: int) -> int:
    """Reputation-weighted price (see the module docstring); lower is better."""
    return price * (2 * MAX_SCORE - reputation)


def primary_key(sort: Sort, offer: Offer, reputation: int) -> int:
    if sort is Sort.PRICE:
        return offer.price_per_second
    if sort is Sort.PRICE_PER_VRAM_GIB:
        return price_per_vram_key(offer)
    return score_key(offer.price_per_second, reputation)


def _nonneg(name: str, v: object) -> None:
    if type(v) is not int or v < 0:
        raise InvalidField(f"{name}: expected a non-negative integer, got {v!r}")


@dataclass(frozen=True, slots=True)
class OfferQuery:
    """Filters (all must hold) and a ranking. Every field is optional.

    - gpu_model: case-insensitive substring of the NVML model name ("h100", "rtx 4090").
    - min_vram_mib: VRAM of each GPU; min_gpus: GPU count; min_total_vram_mib: VRAM summed over
      the listing's GPUs (``vram_mib * count``), which is what a model split across the GPUs of
      one machine needs (market/vram.py computes it from a model size and a context length).
    - max_price_per_second: inclusive ceiling in token base units (market/price.py converts
      "$2.50/h" and friends).
    - country (ISO alpha-2, upper-cased here) and zone (exact) of the offer's region.
    - min_reputation: the renter's local score of the provider (0..1000, unknown providers 500).
    - interruptible: True / False, None for either.
    - cpu_only: only offers without a GPU. Otherwise gpu_required (the default) keeps only offers
      with a GPU; ``gpu_required=False`` accepts both.
    - min_cpu_cores, min_ram_mib; token: only offers priced in this token (20 bytes, zero = ETH).
    - min_isolation: only providers that confine jobs at least this well (market/offer.py's
      ISOLATION_LEVELS, weakest first).
    - sort: a `Sort` or its value; limit: at most this many offers (None: all).
    """

    gpu_model: str | None = None
    min_vram_mib: int = 0
    min_gpus: int = 0
    min_total_vram_mib: int = 0
    max_price_per_second: int | None = None
    country: str | None = None
    zone: str | None = None
    min_reputation: int = 0
    interruptible: bool | None = None
    cpu_only: bool = False
    gpu_required: bool = True
    min_cpu_cores: int = 0
    min_ram_mib: int = 0
    token: bytes | None = None
    min_isolation: str | None = None
    sort: Sort = Sort.PRICE
    limit: int | None = 20
    #: normalize_model(gpu_model), computed once.
    model_needle: str | None = field(init=False, default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.gpu_model is not None:
            if type(self.gpu_model) is not str:
                raise InvalidField("gpu_model: expected text")
            needle = normalize_model(self.gpu_model)
            if not needle or len(needle.encode()) > MAX_TEXT:
                raise InvalidField(f"gpu_model: 1 to {MAX_TEXT} bytes of non-blank text")
            object.__setattr__(self, "model_needle", needle)
        for name in ("min_vram_mib", "min_gpus", "min_total_vram_mib", "min_cpu_cores",
                     "min_ram_mib"):
            _nonneg(name, getattr(self, name))
        if self.max_price_per_second is not None:
            _nonneg("max_price_per_second", self.max_price_per_second)
        if self.country is not None:
            c = self.country.upper() if type(self.country) is str else ""
            if len(c) != 2 or not ("A" <= c[0] <= "Z" and "A" <= c[1] <= "Z"):
                raise InvalidField(f"country: expected a two-letter code, got {self.country!r}")
            object.__setattr__(self, "country", c)
        if self.zone is not None and (type(self.zone) is not str or not self.zone):
            raise InvalidField("zone: expected non-empty text")
        if self.zone is not None and self.country is None:
            raise InvalidField("zone: needs a country")
        r = self.min_reputation
        if type(r) is not int or not MIN_SCORE <= r <= MAX_SCORE:
            raise InvalidField(f"min_reputation: expected an int in [{MIN_SCORE}, {MAX_SCORE}]")
        for name in ("interruptible",):
            v = getattr(self, name)
            if v is not None and type(v) is not bool:
                raise InvalidField(f"{name}: expected True, False or None")
        for name in ("cpu_only", "gpu_required"):
            if type(getattr(self, name)) is not bool:
                raise InvalidField(f"{name}: expected True or False")
        if self.cpu_only and (
            self.gpu_model is not None or self.min_vram_mib or self.min_gpus
            or self.min_total_vram_mib
        ):
            raise InvalidField("cpu_only contradicts a GPU filter")
        if self.token is not None and (type(self.token) is not bytes or len(self.token) != 20):
            raise InvalidField("token: expected 20 bytes")
        if self.min_isolation is not None and self.min_isolation not in ISOLATION_LEVELS:
            raise InvalidField(f"min_isolation: one of {list(ISOLATION_LEVELS)}")
        try:
            object.__setattr__(self, "sort", Sort(self.sort))
        except ValueError:
            raise InvalidField(f"sort: one of {[s.value for s in Sort]}") from None
        if self.limit is not None and (
            type(self.limit) is not int or not 1 <= self.limit <= MAX_LIMIT
        ):
            raise InvalidField(f"limit: expected 1..{MAX_LIMIT} or None")

    @property
    def wants_gpu(self) -> bool | None:
        """True: GPU offers only; False: GPU-less offers only; None: both."""
        if self.cpu_only:
            return False
        return True if self.gpu_required else None

    def matches(self, offer: Offer, reputation: int, now: int) -> bool:
        """Every filter, plus liveness: an expired or withdrawn offer never matches."""
        if offer.expires <= now or offer.capacity == 0:
            return False
        gpu = offer.gpu
        if gpu is None:
            # cpu_only excludes every GPU filter (__post_init__), so a GPU-less offer fails
            # exactly when a GPU is required or a GPU filter is set.
            if self.gpu_required and not self.cpu_only:
                return False
            if (
                self.model_needle is not None or self.min_vram_mib or self.min_gpus
                or self.min_total_vram_mib
            ):
                return False
        else:
            if self.cpu_only:
                return False
            if self.model_needle is not None and self.model_needle not in normalize_model(
                gpu.model
            ):
                return False
            if gpu.vram_mib < self.min_vram_mib or gpu.count < self.min_gpus:
                return False
            if gpu.vram_mib * gpu.count < self.min_total_vram_mib:
                return False
        if self.max_price_per_second is not None and (
            offer.price_per_second > self.max_price_per_second
        ):
            return False
        if self.country is not None:
            if offer.region.country != self.country:
                return False
            if self.zone is not None and offer.region.zone != self.zone:
                return False
        if reputation < self.min_reputation:
            return False
        if self.interruptible is not None and offer.interruptible != self.interruptible:
            return False
        if offer.cpu_cores < self.min_cpu_cores or offer.ram_mib < self.min_ram_mib:
            return False
        if self.min_isolation is not None and _ISOLATION_RANK[offer.isolation] < (
            _ISOLATION_RANK[self.min_isolation]
        ):
            return False
        return not (self.token is not None and offer.token != self.token)

    def sort_key(self, offer: Offer, reputation: int) -> tuple[int, int, bytes, int]:
        return (
            primary_key(self.sort, offer, reputation), offer.price_per_second, offer.provider,
            offer.listing,
        )


def naive_query(
    offers: Iterable[SignedOffer], q: OfferQuery, now: int,
    reputation: Reputation | Callable[[bytes], int],
) -> list[SignedOffer]:
    """The reference answer: a linear scan with a list comprehension and a sort. The offer book
    must return exactly this, only faster (tests/market, tests/bench/bench_book.py)."""
    rep = reputation.score if isinstance(reputation, Reputation) else reputation
    hits = [s for s in offers if q.matches(s.offer, rep(s.offer.provider), now)]
    hits.sort(key=lambda s: q.sort_key(s.offer, rep(s.offer.provider)))
    return hits if q.limit is None else hits[: q.limit]
