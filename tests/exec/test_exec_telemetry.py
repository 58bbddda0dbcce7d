"""Telemetry samples from real H100 captures, their CBOR form, and strict decoding."""

from __future__ import annotations

import dataclasses
import sys

import cbor2
import pytest
import trio
from exec_fixtures import FIXTURES, H100_NAME, H100_UUID, H100_VRAM_MIB

from rigmesh.exec.gpu import RECORDED_H100, NvmlError, ReplayNvml
from rigmesh.exec.runner import JobSpec, Limits, SubprocessRunner
from rigmesh.exec.telemetry import NvmlSampler, SmiSampler, run_sampler, samples_from_smi_csv
from rigmesh.rental.evidence import (
    Finding,
    RentedGpus,
    TelemetryDecodeError,
    TelemetrySample,
    check_window,
)


def replay_all(replay_nvml) -> list[TelemetrySample]:
    """One sample per captured instant, timestamps from the capture itself."""
    sampler = NvmlSampler(
        replay_nvml, clock_ms=lambda: int(replay_nvml.current["t"] * 1000), job_procs=lambda: 3
    )
    out = []
    for i in range(len(replay_nvml.samples)):
        replay_nvml.seek(i)
        out.extend(sampler.sample())
    return out


def test_idle_load_idle_is_visible_in_samples(replay_nvml) -> None:
    samples = replay_all(replay_nvml)
    assert len(samples) == 50
    assert {(s.uuid, s.name, s.mem_total_mib) for s in samples} == {
        (H100_UUID, H100_NAME, H100_VRAM_MIB)
    }
    util = [s.util_gpu_pct for s in samples]
    # The capture: idle, then a bf16 matmul at 100 %, then idle again.
    first_busy = util.index(100)
    last_busy = len(util) - 1 - util[::-1].index(100)
    idle_before, load, idle_after = (
        samples[:first_busy],
        samples[first_busy : last_busy + 1],
        samples[last_busy + 1 :],
    )
    assert idle_before and load and idle_after
    assert all(s.util_gpu_pct == 0 for s in idle_before + idle_after)
    assert all(s.util_gpu_pct == 100 for s in load)
    # Power follows: ~70 W idle, ~700 W under steady load (milliwatts, integers).
    assert max(s.power_mw for s in idle_before) < 120_000
    assert sum(s.power_mw for s in load[4:]) // len(load[4:]) > 650_000
    assert min(s.power_mw for s in idle_after[-3:]) < 130_000
    # The job's memory appears (CUDA context + matrices) and stays allocated after the load.
    assert idle_before[0].mem_used_mib == 480
    assert load[0].mem_used_mib == 1490
    assert max(s.temp_c for s in load) > max(s.temp_c for s in idle_before)
    # The capture has no memory clock: the sample says 'not reported', never 0.
    assert all(s.mem_clock_mhz is None for s in samples)
    assert all(s.sm_clock_mhz and s.sm_clock_mhz > 0 for s in samples)
    assert all(s.job_procs == 3 for s in samples)
    assert [s.t_ms for s in samples] == sorted(s.t_ms for s in samples)


def test_cbor_round_trip_of_every_captured_sample(replay_nvml) -> None:
    for s in replay_all(replay_nvml):
        m = s.to_cbor_map()
        assert "cm" not in m  # absent reading omitted, not null
        assert all(type(v) in (int, str) for v in m.values())
        enc = cbor2.dumps(m, canonical=True)
        assert TelemetrySample.from_cbor_map(cbor2.loads(enc)) == s
        assert len(enc) < 160  # small enough for a heartbeat every few seconds


def good_map() -> dict:
    return TelemetrySample(
        t_ms=1_795_405_377_186,
        gpu_index=0,
        uuid=H100_UUID,
        name=H100_NAME,
        mem_total_mib=81559,
        mem_used_mib=1490,
        util_gpu_pct=100,
        power_mw=203_057,
    ).to_cbor_map()


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda m: m.update(ug=100.0), "ug"),  # float
        (lambda m: m.update(ug=True), "ug"),  # bool is not an int
        (lambda m: m.update(ug=101), "ug"),  # percent out of range
        (lambda m: m.update(pw=-1), "pw"),
        (lambda m: m.update(mt=1 << 64), "mt"),
        (lambda m: m.update(u=b"GPU-x"), "u"),  # bytes, not text
        (lambda m: m.update(n="x" * 129), "n"),
        (lambda m: m.update(tc=None), "tc"),  # null instead of omission
        (lambda m: m.pop("mt"), "mt"),  # required
        (lambda m: m.update(zz=1), "zz"),  # unknown key
        (lambda m: m.update(v=2), "v"),  # unknown version
        (lambda m: m.pop("v"), "v"),
    ],
)
def test_strict_decoding(mutate, field: str) -> None:
    m = good_map()
    mutate(m)
    with pytest.raises(TelemetryDecodeError) as ei:
        TelemetrySample.from_cbor_map(m)
    assert ei.value.field == field


def test_decode_rejects_non_map() -> None:
    with pytest.raises(TelemetryDecodeError):
        TelemetrySample.from_cbor_map([1, 2])


def test_invalid_sample_cannot_be_built() -> None:
    base = TelemetrySample.from_cbor_map(good_map())
    with pytest.raises(TelemetryDecodeError):
        dataclasses.replace(base, power_mw=1.5)  # type: ignore[arg-type]


def test_samples_from_real_smi_csv() -> None:
    (s,) = samples_from_smi_csv((FIXTURES / "nvidia-smi-query.csv").read_text(), t_ms=42)
    assert (s.uuid, s.name, s.mem_total_mib, s.mem_used_mib) == (
        H100_UUID,
        H100_NAME,
        81559,
        0,
    )
    assert (s.util_gpu_pct, s.temp_c, s.power_mw) == (0, 37, 121_210)  # "121.21 W", exact
    assert s.util_mem_pct is None and s.sm_clock_mhz is None  # columns the capture lacks


async def test_smi_sampler_runs_the_executable(fake_smi: str) -> None:
    (s,) = await SmiSampler(fake_smi, clock_ms=lambda: 7, job_procs=lambda: 1).sample()
    assert s.t_ms == 7 and s.uuid == H100_UUID and s.job_procs == 1


async def test_run_sampler_beside_a_running_job(replay_nvml, tmp_path) -> None:
    """The sampler runs at heartbeat rate beside a real job and reports its process count."""
    spec = JobSpec(
        argv=(sys.executable, "-c", "import os, time; os.fork(); time.sleep(30)"),
        limits=Limits(poll_interval_s=0.02),
    )
    got: list[TelemetrySample] = []
    enough = trio.Event()

    def on_samples(batch: list[TelemetrySample]) -> None:
        got.extend(batch)
        replay_nvml.advance()
        if len(got) >= 6:
            enough.set()

    async with SubprocessRunner(str(tmp_path)).start(spec) as job:
        with trio.fail_after(15):
            while job.live_processes() < 2:  # root and its forked child, seen by the runner
                await trio.sleep(0.01)
        sampler = NvmlSampler(replay_nvml, job_procs=job.live_processes)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_sampler, sampler, 0.05, on_samples)
            with trio.fail_after(15):
                await enough.wait()
            nursery.cancel_scope.cancel()
        await job.stop()
    assert len(got) >= 6
    assert all(s.job_procs == 2 for s in got)
    assert [s.t_ms for s in got] == sorted(s.t_ms for s in got)
    assert got[-1].t_ms - got[0].t_ms >= 5 * 50  # the grid: one read every 50 ms, not faster


class LostGpu(ReplayNvml):
    """The capture, until the GPU falls off the bus (NVML answers GPU_IS_LOST)."""

    lost = False

    def memory_bytes(self, h: object) -> tuple[int, int]:
        if self.lost:
            raise NvmlError("GPU is lost")
        return super().memory_bytes(h)


async def test_lost_gpu_is_a_missing_sample_not_a_crash() -> None:
    nv = LostGpu.from_file(RECORDED_H100)
    sampler = NvmlSampler(nv, clock_ms=lambda: 1_000)
    assert len(await sampler.read()) == 1
    nv.lost = True
    assert await sampler.read() == [] and "GPU is lost" in sampler.errors[0]
    with pytest.raises(NvmlError):
        sampler.sample()  # the strict path raises
    rented = RentedGpus(H100_NAME, H100_VRAM_MIB, uuids=(H100_UUID,))
    assert check_window([], rented, 2_000).has(Finding.NO_SAMPLES)


async def test_failing_smi_is_no_samples(fake_smi: str, monkeypatch) -> None:
    monkeypatch.setenv("FAKE_SMI_FAIL", "1")
    sampler = SmiSampler(fake_smi)
    assert await sampler.read() == []
    assert "CalledProcessError" in sampler.errors[0]
