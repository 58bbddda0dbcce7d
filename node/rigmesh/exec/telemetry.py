"""Telemetry samplers: the GPU readings a provider signs into each heartbeat.

The record itself, `TelemetrySample`, and the renter's check of it are protocol logic and live
in the pure core (`rigmesh.rental.evidence`); this module reads the hardware. See
spec/telemetry.md for what a sample can and cannot prove.

Samplers are the I/O side: `NvmlSampler` reads NVML (about a millisecond for one GPU, cheap enough
to run beside a workload every few seconds), `SmiSampler` runs `nvidia-smi --query-gpu` when NVML
is unusable (a subprocess, tens of milliseconds).
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Sequence
from typing import Protocol

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
from rigmesh.rental.evidence import TelemetrySample


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
