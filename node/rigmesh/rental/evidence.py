"""GPU evidence: the telemetry record a heartbeat carries, and the check a renter runs on it.

Pure protocol logic: samples + rented terms + clock value -> `Verdict`. No I/O, no clock reads, so
the renter's usage machine, the simulator and the tests call it with the same inputs and get the
same answer. The samplers that produce records live in the shell (`rigmesh.exec.telemetry`).

A `TelemetrySample` is a frozen record of integers (milli-units where a reading has a fraction,
never floats, so the canonical CBOR encoding and therefore the signature are stable across
implementations) plus the GPU's identity strings. See spec/telemetry.md for what a sample can and
cannot prove.

The check answers three questions, each with reasons:
- gpu_present: every rented GPU (by UUID, or by model and count when no UUIDs were agreed) shows
  up in fresh samples with the agreed model name;
- vram_ok: each such GPU reports at least the VRAM the offer promised, in every sample;
- job_alive: the job's process tree is alive (the runner's count), or, when the provider does not
  report it, the GPU shows utilization.

A verdict is evidence, not proof: the provider produces these readings (spec/telemetry.md).
"""

from __future__ import annotations

import enum
import operator
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from typing import Any, ClassVar

from rigmesh.wire.errors import ErrorCode, WireError

SAMPLE_VERSION = 1
_MAX_INT = (1 << 63) - 1
_MAX_STR = 128


class TelemetryDecodeError(WireError):
    """A telemetry map from a peer is malformed (`Malformed`: a missing or unknown key, a wrong
    type) or out of range (`InvalidField`). `field` names the offending key."""

    def __init__(self, field: str, problem: str, code: ErrorCode = ErrorCode.Malformed) -> None:
        self.code = code
        super().__init__(f"telemetry field {field!r}: {problem}")
        self.field = field
        self.problem = problem


class _WireMapSlot:
    """The slot where a sample keeps its CBOR map once built (`TelemetrySample.wire_map`). Not a
    dataclass field: equality, hashing, repr and pickling see the readings only."""

    __slots__ = ("_wire",)


@dataclass(frozen=True, slots=True)
class TelemetrySample(_WireMapSlot):
    """One GPU at one instant, as the provider's node read it.

    Optional readings are None when the GPU or the source does not report them; they are left out
    of the CBOR map rather than encoded as null, so an absent reading is never mistaken for zero.
    """

    t_ms: int  # provider wall clock, Unix milliseconds (a claim: the provider sets its clock)
    gpu_index: int  # NVML index on the provider host
    uuid: str  # "GPU-..." as NVML reports it
    name: str  # model name as NVML reports it
    mem_total_mib: int
    mem_used_mib: int
    util_gpu_pct: int | None = None  # 0..100, share of the last sample period a kernel ran
    util_mem_pct: int | None = None  # 0..100, share of time device memory was read or written
    temp_c: int | None = None  # core temperature, whole degrees Celsius (NVML's resolution)
    power_mw: int | None = None  # board power draw, milliwatts
    sm_clock_mhz: int | None = None
    mem_clock_mhz: int | None = None
    job_procs: int | None = None  # live processes in the rented job's tree (runner's count)

    # CBOR keys: short, fixed, part of the signed format. Changing one is a version bump.
    KEYS: ClassVar[dict[str, str]] = {
        "t_ms": "t",
        "gpu_index": "i",
        "uuid": "u",
        "name": "n",
        "mem_total_mib": "mt",
        "mem_used_mib": "mu",
        "util_gpu_pct": "ug",
        "util_mem_pct": "um",
        "temp_c": "tc",
        "power_mw": "pw",
        "sm_clock_mhz": "cs",
        "mem_clock_mhz": "cm",
        "job_procs": "jp",
    }
    REQUIRED: ClassVar[frozenset[str]] = frozenset(
        {"t_ms", "gpu_index", "uuid", "name", "mem_total_mib", "mem_used_mib"}
    )
    PCT_FIELDS: ClassVar[frozenset[str]] = frozenset({"util_gpu_pct", "util_mem_pct"})

    def __post_init__(self) -> None:
        # Same checks on construction as on decoding: an invalid sample cannot exist. The field
        # names are read once (`_SAMPLE_FIELDS`): dataclasses.fields() per sample cost a third
        # of a heartbeat's decoding.
        for name in _SAMPLE_FIELDS:
            val = getattr(self, name)
            text, lo, hi = _LIMITS[name]  # the common case inline; _check_value names faults
            if val is None and name not in self.REQUIRED:
                continue  # not reported
            if text:
                if type(val) is str and 0 < len(val) <= hi:
                    continue
            elif type(val) is int and lo <= val <= hi:
                continue
            _check_value(name, val, self.REQUIRED)

    def to_cbor_map(self) -> dict[str, Any]:
        """Map ready for canonical CBOR encoding (keys short, None readings omitted)."""
        return dict(self.wire_map())

    def wire_map(self) -> dict[str, Any]:
        """`to_cbor_map`, built once per sample and shared: the caller must not change it. A
        sample goes out in every heartbeat while it is among its GPU's newest, so a provider
        would otherwise build the same map several times."""
        try:
            return self._wire  # type: ignore[no-any-return]
        except AttributeError:
            pass
        out: dict[str, Any] = {"v": SAMPLE_VERSION}
        for attr, key in self.KEYS.items():
            val = getattr(self, attr)
            if val is not None:
                out[key] = val
        object.__setattr__(self, "_wire", out)
        return out

    @classmethod
    def from_cbor_map(cls, d: object) -> TelemetrySample:
        """Strict decoding: exact key set, exact types (bool is not an int), bounded values."""
        fast = _accept_sample(d)
        if fast is not None:
            return fast
        if not isinstance(d, Mapping):
            raise TelemetryDecodeError("<map>", f"expected a map, got {type(d).__name__}")
        if d.get("v") != SAMPLE_VERSION or type(d.get("v")) is not int:
            raise TelemetryDecodeError("v", f"unsupported version {d.get('v')!r}")
        by_key = _ATTR_OF_KEY
        kwargs: dict[str, Any] = {}
        for key, val in d.items():
            if key == "v":
                continue
            if not isinstance(key, str) or key not in by_key:
                raise TelemetryDecodeError(str(key), "unknown key")
            kwargs[by_key[key]] = val
        for attr in cls.REQUIRED:
            if attr not in kwargs:
                raise TelemetryDecodeError(cls.KEYS[attr], "missing")
        for attr, val in kwargs.items():
            # The common case inline (`_LIMITS`); `_check_value` names any fault.
            text, lo, hi = _LIMITS[attr]
            if text:
                ok = type(val) is str and 0 < len(val) <= hi
            else:
                ok = type(val) is int and lo <= val <= hi
            if ok:
                continue
            if val is None:  # omitted is the only way to say 'not reported'
                raise TelemetryDecodeError(cls.KEYS[attr], "null not allowed, omit the key")
            _check_value(attr, val, cls.REQUIRED, key=cls.KEYS[attr])
            raise AssertionError(f"{attr}: _LIMITS and _check_value disagree")  # never
        # Every value passed the checks __post_init__ would repeat: build the sample without
        # running them twice (a heartbeat carries up to 16 samples; this halves their cost).
        return _new_sample([kwargs.get(attr) for attr in _SAMPLE_FIELDS])


#: TelemetrySample's field names in order, and the attribute of each CBOR key (read once).
_SAMPLE_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(TelemetrySample))
_ATTR_OF_KEY: dict[str, str] = {key: attr for attr, key in TelemetrySample.KEYS.items()}
#: Each field's slot setter: it fills a frozen sample at half the cost of object.__setattr__.
_SETTERS = tuple(TelemetrySample.__dict__[attr].__set__ for attr in _SAMPLE_FIELDS)


def _new_sample(values: Iterable[Any]) -> TelemetrySample:
    """A sample of already checked `values` (in `_SAMPLE_FIELDS` order), without running
    `__post_init__`'s checks again."""
    sample = object.__new__(TelemetrySample)
    for put, val in zip(_SETTERS, values, strict=False):
        put(sample, val)
    return sample


def _limits(attr: str) -> tuple[bool, int, int]:
    """(is text, low, high) of a sample's field: what `_check_value` accepts, as a table."""
    if attr in ("uuid", "name"):
        return True, 1, _MAX_STR
    lo = -273 if attr == "temp_c" else 0
    hi = 100 if attr in TelemetrySample.PCT_FIELDS else _MAX_INT
    return False, lo, hi


_LIMITS = {attr: _limits(attr) for attr in _SAMPLE_FIELDS}
#: Per CBOR key: (position in _SAMPLE_FIELDS, is text, low, high).
_BY_KEY = {key: (_SAMPLE_FIELDS.index(attr), *_LIMITS[attr])
           for attr, key in TelemetrySample.KEYS.items()}
_KNOWN_KEYS = frozenset({"v", *TelemetrySample.KEYS.values()})
_REQUIRED_KEYS = frozenset({"v", *(TelemetrySample.KEYS[a] for a in TelemetrySample.REQUIRED)})


#: A sample with every reading (what NVML gives a node's sampler): its values in field order,
#: then the version, fetched in one C call; their types checked in one tuple comparison.
_read_every = operator.itemgetter(
    *(TelemetrySample.KEYS[a] for a in _SAMPLE_FIELDS), "v"
)
_EVERY_TYPE = (*(str if _LIMITS[a][0] else int for a in _SAMPLE_FIELDS), int)
assert _SAMPLE_FIELDS == (
    "t_ms", "gpu_index", "uuid", "name", "mem_total_mib", "mem_used_mib", "util_gpu_pct",
    "util_mem_pct", "temp_c", "power_mw", "sm_clock_mhz", "mem_clock_mhz", "job_procs",
), "_accept_every reads the fields in this order"


def _accept_every(d: dict[str, Any]) -> TelemetrySample | None:
    """The sample with every reading, checked as `_LIMITS` says (None on any doubt)."""
    if len(d) != len(_SAMPLE_FIELDS) + 1:
        return None
    try:
        values = _read_every(d)  # with every key present and no other, the key set is exact
    except KeyError:
        return None
    if tuple(map(type, values)) != _EVERY_TYPE:
        return None
    t, index, uuid, name, total, used, util, util_mem, temp, power, sm, mem, procs, v = values
    if not (
        v == SAMPLE_VERSION and min(t, index, total, used, power, sm, mem, procs) >= 0
        and max(t, index, total, used, power, sm, mem, procs, temp) <= _MAX_INT
        and 0 <= util <= 100 and 0 <= util_mem <= 100 and temp >= -273
        and 0 < len(uuid) <= _MAX_STR and 0 < len(name) <= _MAX_STR
    ):
        return None
    return _new_sample(values)


def _accept_sample(d: object) -> TelemetrySample | None:
    """The usual sample in one pass; None on any doubt, and `from_cbor_map`'s checks decide,
    and name, the refusal (the same rules: `_LIMITS` is `_check_value` as a table)."""
    if type(d) is not dict:
        return None
    every = _accept_every(d)
    if every is not None:
        return every
    if not (_REQUIRED_KEYS <= d.keys() <= _KNOWN_KEYS):
        return None
    v = d["v"]
    if type(v) is not int or v != SAMPLE_VERSION:
        return None
    values: list[Any] = [None] * len(_SAMPLE_FIELDS)
    for key, val in d.items():
        if key == "v":
            continue
        at, text, lo, hi = _BY_KEY[key]
        if text:
            if type(val) is not str or not 0 < len(val) <= hi:
                return None
        elif type(val) is not int or not lo <= val <= hi:
            return None
        values[at] = val
    return _new_sample(values)


def _check_value(attr: str, val: object, required: frozenset[str], key: str | None = None) -> None:
    name = key or attr
    if val is None:
        if attr in required:
            raise TelemetryDecodeError(name, "required")
        return
    if attr in ("uuid", "name"):
        if type(val) is not str:
            raise TelemetryDecodeError(name, f"expected text, got {type(val).__name__}")
        if not val or len(val) > _MAX_STR:
            raise TelemetryDecodeError(
                name, f"length must be 1..{_MAX_STR}", ErrorCode.InvalidField
            )
        return
    if type(val) is not int:  # rejects bool and float
        raise TelemetryDecodeError(name, f"expected int, got {type(val).__name__}")
    lo = -273 if attr == "temp_c" else 0
    hi = 100 if attr in TelemetrySample.PCT_FIELDS else _MAX_INT
    if not lo <= val <= hi:
        raise TelemetryDecodeError(name, f"{val} out of range {lo}..{hi}", ErrorCode.InvalidField)



@dataclass(frozen=True)
class RentedGpus:
    """What the agreement says the renter gets."""

    model: str  # NVML name, as in the offer, e.g. "NVIDIA H100 80GB HBM3"
    vram_mib: int  # per GPU
    count: int = 1
    uuids: tuple[str, ...] = ()  # pinned GPUs, once the provider has assigned them

    def __post_init__(self) -> None:
        if self.uuids and len(set(self.uuids)) != self.count:
            raise ValueError("uuids must list exactly `count` distinct GPUs")


@dataclass(frozen=True)
class EvidencePolicy:
    window_ms: int = 60_000  # samples older than now - window are ignored
    max_age_ms: int = 30_000  # the newest sample of each GPU must be at least this fresh
    max_future_ms: int = 5_000  # tolerated clock skew; later timestamps are rejected
    busy_util_pct: int = 1  # utilization at or above this counts as 'in use'
    require_busy: bool = False  # an idle GPU counts as a dead job (for pure-GPU workloads)


class Finding(enum.Enum):
    NO_SAMPLES = "no_samples"  # nothing in the window at all
    FROM_FUTURE = "from_future"  # a sample stamped after now + skew (ignored)
    GPU_MISSING = "gpu_missing"  # a rented GPU has no sample in the window
    STALE = "stale"  # a rented GPU's newest sample is too old
    MODEL_MISMATCH = "model_mismatch"  # the GPU reports another model name
    VRAM_SHORT = "vram_short"  # total VRAM below what the offer promised
    JOB_NOT_RUNNING = "job_not_running"  # the runner reports 0 live processes
    JOB_UNREPORTED = "job_unreported"  # no process count; liveness judged from utilization
    GPU_IDLE = "gpu_idle"  # no utilization at or above busy_util_pct in the window


@dataclass(frozen=True)
class Verdict:
    gpu_present: bool
    vram_ok: bool
    job_alive: bool
    gpu_busy: bool | None  # None when no sample reports utilization
    findings: tuple[tuple[Finding, str], ...]

    @property
    def ok(self) -> bool:
        return self.gpu_present and self.vram_ok and self.job_alive

    def has(self, f: Finding) -> bool:
        return any(x is f for x, _ in self.findings)


def check_window(
    samples: Iterable[TelemetrySample],
    rented: RentedGpus,
    now_ms: int,
    policy: EvidencePolicy | None = None,
) -> Verdict:
    pol = policy or EvidencePolicy()
    findings: list[tuple[Finding, str]] = []
    window: list[TelemetrySample] = []
    for s in samples:
        if s.t_ms > now_ms + pol.max_future_ms:
            findings.append((Finding.FROM_FUTURE, f"{s.uuid} at t={s.t_ms} > now={now_ms}"))
        elif s.t_ms >= now_ms - pol.window_ms:
            window.append(s)
    if not window:
        findings.append((Finding.NO_SAMPLES, f"none in the last {pol.window_ms} ms"))
        return Verdict(False, False, False, None, tuple(findings))

    by_uuid: dict[str, list[TelemetrySample]] = {}
    for s in window:
        by_uuid.setdefault(s.uuid, []).append(s)

    # Which GPUs are 'the rented ones': pinned UUIDs, else any GPUs with the agreed model name.
    if rented.uuids:
        wanted = list(rented.uuids)
    else:
        matching = sorted(u for u, ss in by_uuid.items() if ss[-1].name == rented.model)
        wanted = matching[: rented.count]
        for k in range(len(wanted), rented.count):
            findings.append((Finding.GPU_MISSING, f"only {len(matching)} x {rented.model} (#{k})"))

    present = len(wanted) == rented.count
    vram_ok = present
    mine: list[TelemetrySample] = []
    for uuid in wanted:
        ss = by_uuid.get(uuid)
        if not ss:
            findings.append((Finding.GPU_MISSING, uuid))
            present = vram_ok = False
            continue
        mine.extend(ss)
        newest = max(s.t_ms for s in ss)
        if now_ms - newest > pol.max_age_ms:
            findings.append((Finding.STALE, f"{uuid} newest {now_ms - newest} ms old"))
            present = False
        names = {s.name for s in ss}
        if names != {rented.model}:
            findings.append((Finding.MODEL_MISMATCH, f"{uuid} reports {sorted(names)}"))
            present = False
        least = min(s.mem_total_mib for s in ss)
        if least < rented.vram_mib:
            findings.append((Finding.VRAM_SHORT, f"{uuid} {least} MiB < {rented.vram_mib} MiB"))
            vram_ok = False

    utils = [s.util_gpu_pct for s in mine if s.util_gpu_pct is not None]
    busy = None if not utils else max(utils) >= pol.busy_util_pct
    if busy is False:
        findings.append((Finding.GPU_IDLE, f"max utilization {max(utils)} %"))

    # Liveness from the newest sample that carries the runner's process count.
    counted = [s for s in mine if s.job_procs is not None]
    if counted:
        latest = max(counted, key=lambda s: s.t_ms)
        alive = latest.job_procs is not None and latest.job_procs > 0
        if not alive:
            findings.append((Finding.JOB_NOT_RUNNING, f"0 processes at t={latest.t_ms}"))
    else:
        findings.append((Finding.JOB_UNREPORTED, "judged from utilization"))
        alive = bool(busy)
    if pol.require_busy and not busy:
        alive = False
    return Verdict(present, vram_ok, alive, busy, tuple(findings))
