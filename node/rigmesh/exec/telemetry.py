"""Telemetry samples: the GPU readings a provider signs into each heartbeat.

A sample is a frozen record of integers (milli-units where a reading has a fraction, never floats,
so the canonical CBOR encoding and therefore the signature are stable across implementations) plus
the GPU's identity strings. See spec/telemetry.md for what a sample can and cannot prove.

Samplers are the I/O side: `NvmlSampler` reads NVML (about a millisecond for one GPU, cheap enough
to run beside a workload every few seconds), `SmiSampler` runs `nvidia-smi --query-gpu` when NVML
is unusable (a subprocess, tens of milliseconds).
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Protocol

import trio

from rigmesh.exec.gpu import (
    SMI_QUERY_FIELDS,
    MiB,
    NvmlError,
    NvmlLike,
    SmiParseError,
    leading_int,
    milli_units,
    parse_smi_csv,
    run_smi,
)

SAMPLE_VERSION = 1
_MAX_INT = (1 << 63) - 1
_MAX_STR = 128


class TelemetryDecodeError(ValueError):
    """A telemetry map from a peer is malformed. `field` names the offending key."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"telemetry field {field!r}: {problem}")
        self.field = field
        self.problem = problem


@dataclass(frozen=True, slots=True)
class TelemetrySample:
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
        # Same checks on construction as on decoding: an invalid sample cannot exist.
        for f in fields(self):
            _check_value(f.name, getattr(self, f.name), self.REQUIRED)

    def to_cbor_map(self) -> dict[str, Any]:
        """Map ready for canonical CBOR encoding (keys short, None readings omitted)."""
        out: dict[str, Any] = {"v": SAMPLE_VERSION}
        for attr, key in self.KEYS.items():
            val = getattr(self, attr)
            if val is not None:
                out[key] = val
        return out

    @classmethod
    def from_cbor_map(cls, d: object) -> TelemetrySample:
        """Strict decoding: exact key set, exact types (bool is not an int), bounded values."""
        if not isinstance(d, Mapping):
            raise TelemetryDecodeError("<map>", f"expected a map, got {type(d).__name__}")
        if d.get("v") != SAMPLE_VERSION or type(d.get("v")) is not int:
            raise TelemetryDecodeError("v", f"unsupported version {d.get('v')!r}")
        by_key = {key: attr for attr, key in cls.KEYS.items()}
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
            if val is None:  # omitted is the only way to say 'not reported'
                raise TelemetryDecodeError(cls.KEYS[attr], "null not allowed, omit the key")
            _check_value(attr, val, cls.REQUIRED, key=cls.KEYS[attr])
        return cls(**kwargs)


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
            raise TelemetryDecodeError(name, f"length must be 1..{_MAX_STR}")
        return
    if type(val) is not int:  # rejects bool and float
        raise TelemetryDecodeError(name, f"expected int, got {type(val).__name__}")
    lo = -273 if attr == "temp_c" else 0
    hi = 100 if attr in TelemetrySample.PCT_FIELDS else _MAX_INT
    if not lo <= val <= hi:
        raise TelemetryDecodeError(name, f"{val} out of range {lo}..{hi}")


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


class TelemetrySource(Protocol):
    async def read(self) -> list[TelemetrySample]: ...


async def run_sampler(
    source: TelemetrySource,
    interval_s: float,
    on_samples: Callable[[list[TelemetrySample]], object],
) -> None:
    """Read `source` every `interval_s` on a fixed grid (no drift) until cancelled.

    A slow read delays the next one instead of queueing reads back to back, so a hung
    nvidia-smi cannot turn into a burst of subprocesses when it recovers.
    """
    next_t = trio.current_time()
    while True:
        on_samples(await source.read())
        next_t = max(next_t + interval_s, trio.current_time())
        await trio.sleep_until(next_t)


class NvmlSampler:
    """Reads one TelemetrySample per GPU from an NvmlLike (call `nvml.init()` first, once).

    Synchronous on purpose: a read is a handful of ioctls (about a millisecond), cheaper than a
    thread hop. `job_procs` is a callable so the runner's live count lands in the same record.
    """

    def __init__(
        self,
        nvml: NvmlLike,
        indices: Sequence[int] | None = None,
        *,
        clock_ms: Callable[[], int] = _wall_ms,
        job_procs: Callable[[], int] | None = None,
    ) -> None:
        self._nvml = nvml
        n = nvml.device_count()
        idx = list(range(n)) if indices is None else list(indices)
        # Identity does not change while the node runs: read it once, not every heartbeat.
        self._devs = [(i, h, nvml.uuid(h), nvml.name(h)) for i in idx for h in [nvml.handle(i)]]
        self._clock_ms = clock_ms
        self._job_procs = job_procs
        self.errors: list[str] = []  # why GPUs were left out of the last read()

    async def read(self) -> list[TelemetrySample]:
        """Heartbeat path: a GPU whose readings fail is left out (see `errors`), not fatal.

        An absent sample is itself the evidence: the renter's checker reports the GPU missing.
        """
        return self.sample(strict=False)

    def sample(self, *, strict: bool = True) -> list[TelemetrySample]:
        """One sample per GPU. strict: an NVML failure raises NvmlError instead of skipping."""
        t = self._clock_ms()
        jp = None if self._job_procs is None else self._job_procs()
        out = []
        self.errors = []
        for i, h, uuid, name in self._devs:
            try:
                total, used = self._nvml.memory_bytes(h)
                util = self._nvml.utilization_pct(h)
                sm, mem = self._nvml.clocks_mhz(h)
                temp, power = self._nvml.temperature_c(h), self._nvml.power_mw(h)
            except NvmlError as e:  # e.g. GPU_IS_LOST: fell off the bus, Xid 79
                if strict:
                    raise
                self.errors.append(f"{uuid}: {e}")
                continue
            out.append(
                TelemetrySample(
                    t_ms=t,
                    gpu_index=i,
                    uuid=uuid,
                    name=name,
                    mem_total_mib=total // MiB,
                    mem_used_mib=used // MiB,
                    util_gpu_pct=None if util is None else util[0],
                    util_mem_pct=None if util is None else util[1],
                    temp_c=temp,
                    power_mw=power,
                    sm_clock_mhz=sm,
                    mem_clock_mhz=mem,
                    job_procs=jp,
                )
            )
        return out


def samples_from_smi_csv(
    csv_text: str, t_ms: int, job_procs: int | None = None
) -> list[TelemetrySample]:
    """Pure: one `nvidia-smi --query-gpu` CSV answer -> samples. Missing columns read as None."""
    out = []
    for pos, r in enumerate(parse_smi_csv(csv_text)):
        idx = leading_int(r.get("index"))
        total = leading_int(r.get("memory.total"))
        used = leading_int(r.get("memory.used"))
        if total is None or used is None or not r.get("uuid") or not r.get("name"):
            continue  # a GPU nvidia-smi cannot read (fallen off the bus): no sample, no claim
        out.append(
            TelemetrySample(
                t_ms=t_ms,
                gpu_index=pos if idx is None else idx,
                uuid=r["uuid"],
                name=r["name"],
                mem_total_mib=total,
                mem_used_mib=used,
                util_gpu_pct=leading_int(r.get("utilization.gpu")),
                util_mem_pct=leading_int(r.get("utilization.memory")),
                temp_c=leading_int(r.get("temperature.gpu")),
                power_mw=milli_units(r.get("power.draw")),
                sm_clock_mhz=leading_int(r.get("clocks.sm")),
                mem_clock_mhz=leading_int(r.get("clocks.mem")),
                job_procs=job_procs,
            )
        )
    return out


class SmiSampler:
    """Telemetry through the nvidia-smi executable, for hosts where NVML cannot be loaded."""

    def __init__(
        self,
        exe: str = "nvidia-smi",
        *,
        clock_ms: Callable[[], int] = _wall_ms,
        job_procs: Callable[[], int] | None = None,
        timeout_s: float = 5.0,
    ) -> None:
        self._exe = exe
        self._clock_ms = clock_ms
        self._job_procs = job_procs
        self._timeout_s = timeout_s
        self.errors: list[str] = []  # why the last read() returned nothing

    async def read(self) -> list[TelemetrySample]:
        """Heartbeat path: a failed or hung nvidia-smi yields no samples (see `errors`)."""
        self.errors = []
        try:
            return await self.sample()
        except (OSError, subprocess.CalledProcessError, trio.TooSlowError, SmiParseError) as e:
            self.errors.append(f"nvidia-smi: {type(e).__name__}: {e}")
            return []

    async def sample(self) -> list[TelemetrySample]:
        text = await run_smi(
            self._exe, [f"--query-gpu={SMI_QUERY_FIELDS}", "--format=csv"], self._timeout_s
        )
        jp = None if self._job_procs is None else self._job_procs()
        return samples_from_smi_csv(text, self._clock_ms(), jp)
