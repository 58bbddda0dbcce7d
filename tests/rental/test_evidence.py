"""The pure evidence checker, on windows built from the real H100 capture."""

from __future__ import annotations

import dataclasses

import pytest

from rigmesh.exec.gpu import ReplayNvml
from rigmesh.exec.telemetry import NvmlSampler
from rigmesh.rental.evidence import (
    EvidencePolicy,
    Finding,
    RentedGpus,
    TelemetrySample,
    check_window,
)
from tests.exec.exec_fixtures import H100_NAME, H100_UUID, H100_VRAM_MIB

# The offer states VRAM as the probe reads it: an "80GB" H100 reports 81559 MiB, less than
# 80 * 1024. Offers must carry the probed figure, not the marketing name.
RENTED = RentedGpus(model=H100_NAME, vram_mib=H100_VRAM_MIB, uuids=(H100_UUID,))


@pytest.fixture
def capture() -> list[TelemetrySample]:
    replay_nvml = ReplayNvml.recorded_h100()
    sampler = NvmlSampler(
        replay_nvml, clock_ms=lambda: int(replay_nvml.current["t"] * 1000), job_procs=lambda: 2
    )
    out = []
    for i in range(len(replay_nvml.samples)):
        replay_nvml.seek(i)
        out.extend(sampler.sample())
    return out


def end(samples: list[TelemetrySample]) -> int:
    return samples[-1].t_ms + 100


def test_healthy_rental(capture) -> None:
    v = check_window(capture, RENTED, end(capture))
    assert v.ok and v.gpu_present and v.vram_ok and v.job_alive and v.gpu_busy
    assert v.findings == ()


def test_unpinned_offer_matches_by_model_and_count(capture) -> None:
    v = check_window(capture, RentedGpus(model=H100_NAME, vram_mib=H100_VRAM_MIB), end(capture))
    assert v.ok
    two = check_window(capture, RentedGpus(H100_NAME, H100_VRAM_MIB, count=2), end(capture))
    assert not two.gpu_present and two.has(Finding.GPU_MISSING)


def test_wrong_gpu_uuid(capture) -> None:
    rented = dataclasses.replace(RENTED, uuids=("GPU-00000000-0000-0000-0000-000000000000",))
    v = check_window(capture, rented, end(capture))
    assert not v.gpu_present and v.has(Finding.GPU_MISSING) and not v.ok


def test_model_mismatch(capture) -> None:
    v = check_window(capture, dataclasses.replace(RENTED, model="NVIDIA H200"), end(capture))
    assert not v.gpu_present and v.has(Finding.MODEL_MISMATCH)


def test_vram_short_of_the_offer(capture) -> None:
    v = check_window(capture, dataclasses.replace(RENTED, vram_mib=141 * 1024), end(capture))
    assert v.gpu_present and not v.vram_ok and v.has(Finding.VRAM_SHORT)
    exact = check_window(capture, dataclasses.replace(RENTED, vram_mib=81559), end(capture))
    assert exact.vram_ok  # total >= promised, equality included


def test_stale_and_empty_windows(capture) -> None:
    pol = EvidencePolicy(window_ms=60_000, max_age_ms=5_000)
    v = check_window(capture, RENTED, end(capture) + 20_000, pol)
    assert not v.gpu_present and v.has(Finding.STALE)
    gone = check_window(capture, RENTED, end(capture) + 120_000, pol)
    assert gone.has(Finding.NO_SAMPLES) and not gone.ok
    assert check_window([], RENTED, 0).has(Finding.NO_SAMPLES)


def test_future_samples_are_ignored(capture) -> None:
    now = capture[10].t_ms
    v = check_window(capture, RENTED, now, EvidencePolicy(max_future_ms=1_000))
    assert v.has(Finding.FROM_FUTURE)
    # Only the first idle samples count at that instant: present, but idle.
    assert v.gpu_present and v.gpu_busy is False


def test_job_dead_from_process_count(capture) -> None:
    dead = [dataclasses.replace(s, job_procs=0) for s in capture]
    v = check_window(dead, RENTED, end(dead))
    assert v.gpu_present and not v.job_alive and v.has(Finding.JOB_NOT_RUNNING)


def test_liveness_from_utilization_when_unreported(capture) -> None:
    unreported = [dataclasses.replace(s, job_procs=None) for s in capture]
    v = check_window(unreported, RENTED, end(unreported))
    assert v.job_alive and v.has(Finding.JOB_UNREPORTED)
    idle_only = [s for s in unreported if s.util_gpu_pct == 0][:20]
    w = check_window(idle_only, RENTED, end(idle_only))
    assert not w.job_alive and w.has(Finding.GPU_IDLE)


def test_require_busy_policy(capture) -> None:
    idle_only = [s for s in capture if s.util_gpu_pct == 0][:20]
    relaxed = check_window(idle_only, RENTED, end(idle_only))
    strict = check_window(idle_only, RENTED, end(idle_only), EvidencePolicy(require_busy=True))
    assert relaxed.job_alive and not strict.job_alive


def test_rented_terms_validation() -> None:
    with pytest.raises(ValueError):
        RentedGpus(H100_NAME, 1, count=2, uuids=(H100_UUID,))


def test_marketing_vram_is_more_than_an_h100_reports(capture) -> None:
    v = check_window(capture, dataclasses.replace(RENTED, vram_mib=80 * 1024), end(capture))
    assert not v.vram_ok  # 81559 MiB < 81920 MiB: "80GB" means 80e9-ish bytes, not 80 GiB
