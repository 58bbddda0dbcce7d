"""GPU probe against real H100 captures: NVML replay, and nvidia-smi as a real subprocess."""

from __future__ import annotations

import types

import pynvml
import pytest
from exec_fixtures import FIXTURES, H100_NAME, H100_UUID

from rigmesh.exec.gpu import (
    GpuInventory,
    NoGpu,
    NvmlError,
    PynvmlAdapter,
    SmiParseError,
    cuda_version_str,
    parse_smi_csv,
    parse_smi_xml,
    probe,
    probe_nvml,
    probe_smi,
)
from rigmesh.exec.telemetry import NvmlSampler


def test_probe_nvml_reads_offer_fields(replay_nvml) -> None:
    inv = probe_nvml(replay_nvml)
    assert inv.source == "nvml"
    assert inv.driver_version == "580.159.04"
    assert inv.cuda_version == "13.0"
    assert inv.count == 1
    (g,) = inv.gpus
    assert g.name == H100_NAME
    assert g.uuid == H100_UUID
    assert g.vram_mib == 81559  # 85520809984 bytes, the same figure nvidia-smi prints
    assert g.compute_capability == "9.0"
    assert g.pci_bus_id == "00000000:00:06.0"


def test_cuda_version_strings() -> None:
    assert cuda_version_str(13000) == "13.0"
    assert cuda_version_str(12040) == "12.4"
    assert cuda_version_str(11080) == "11.8"


def test_parse_real_smi_xml_agrees_with_nvml(replay_nvml) -> None:
    xml_text = (FIXTURES / "nvidia-smi-q.xml").read_text()
    inv = parse_smi_xml(xml_text, {H100_UUID: "9.0"})
    nv = probe_nvml(replay_nvml)
    assert inv.source == "nvidia-smi"
    assert inv.gpus == nv.gpus  # both sources describe the same GPU identically
    assert (inv.driver_version, inv.cuda_version) == (nv.driver_version, nv.cuda_version)


def test_smi_xml_without_compute_caps_leaves_it_unknown() -> None:
    inv = parse_smi_xml((FIXTURES / "nvidia-smi-q.xml").read_text())
    assert inv.gpus[0].compute_capability is None


@pytest.mark.parametrize(
    "text", ["", "<html/>", "<nvidia_smi_log><gpu><uuid>x</uuid></gpu></nvidia_smi_log>", "<a"]
)
def test_smi_xml_garbage_is_a_typed_error(text: str) -> None:
    with pytest.raises(SmiParseError):
        parse_smi_xml(text)


def test_parse_real_smi_csv() -> None:
    (row,) = parse_smi_csv((FIXTURES / "nvidia-smi-query.csv").read_text())
    assert row["uuid"] == H100_UUID
    assert row["memory.total"] == "81559 MiB"
    assert row["compute_cap"] == "9.0"
    assert row["power.draw"] == "121.21 W"


async def test_probe_smi_runs_the_executable(fake_smi: str) -> None:
    inv = await probe_smi(fake_smi)
    assert inv.source == "nvidia-smi"
    (g,) = inv.gpus
    assert (g.name, g.uuid, g.vram_mib, g.compute_capability) == (
        H100_NAME,
        H100_UUID,
        81559,
        "9.0",
    )
    assert inv.cuda_version == "13.0"


class BrokenNvml:
    """NVML that fails at init, as on a host without the driver."""

    def init(self) -> None:
        raise NvmlError("NVML Shared Library Not Found")


async def test_probe_falls_back_to_smi_when_nvml_fails(fake_smi: str) -> None:
    res = await probe(BrokenNvml(), smi_exe=fake_smi)  # type: ignore[arg-type]
    assert isinstance(res.gpu, GpuInventory) and res.gpu.source == "nvidia-smi"
    assert res.capacity_kind == "gpu"


async def test_probe_prefers_nvml(replay_nvml, fake_smi: str) -> None:
    res = await probe(replay_nvml, smi_exe=fake_smi)
    assert isinstance(res.gpu, GpuInventory) and res.gpu.source == "nvml"


async def test_no_gpu_is_a_result_and_cpu_capacity_remains(
    fake_smi: str, monkeypatch, tmp_path
) -> None:
    monkeypatch.setenv("FAKE_SMI_FAIL", "1")  # nvidia-smi present, driver not answering
    res = await probe(BrokenNvml(), smi_exe=fake_smi, job_dir=str(tmp_path))  # type: ignore[arg-type]
    assert isinstance(res.gpu, NoGpu)
    assert res.capacity_kind == "cpu"
    assert any("nvml" in a for a in res.gpu.attempts)
    assert any("nvidia-smi" in a for a in res.gpu.attempts)
    h = res.host
    assert h.cpu_cores >= 1 and h.ram_mib > 0 and h.disk_total_gib >= h.disk_free_gib >= 0


async def test_probe_on_this_host_never_raises() -> None:
    # Real NVML and real PATH lookup: on a CI box without a GPU this must say NoGpu, not crash.
    res = await probe()
    if isinstance(res.gpu, NoGpu):
        assert res.capacity_kind == "cpu" and res.gpu.attempts
    else:
        assert res.gpu.count >= 1


def test_real_pynvml_adapter_raises_typed_error_without_driver() -> None:
    nv = PynvmlAdapter()
    try:
        nv.init()
    except NvmlError:
        return  # expected where there is no NVIDIA driver
    try:  # a GPU host: the adapter must read real devices
        assert probe_nvml(nv).count >= 1
    finally:
        nv.shutdown()


class CaptureBackedPynvml:
    """The pynvml module's call surface, answering from the H100 capture (no driver here).

    Used only to test PynvmlAdapter's translation layer: real pynvml error classes, real
    NOT_SUPPORTED semantics (the capture has no memory clock), bytes-vs-str names.
    """

    def __init__(self, replay) -> None:
        self._r = replay
        self.NVMLError = pynvml.NVMLError
        self.NVML_ERROR_NOT_SUPPORTED = pynvml.NVML_ERROR_NOT_SUPPORTED
        self.NVML_TEMPERATURE_GPU = pynvml.NVML_TEMPERATURE_GPU
        self.NVML_CLOCK_SM = pynvml.NVML_CLOCK_SM
        self.NVML_CLOCK_MEM = pynvml.NVML_CLOCK_MEM
        self._ns = types.SimpleNamespace

    def nvmlInit(self) -> None:
        pass

    def nvmlShutdown(self) -> None:
        pass

    def nvmlSystemGetDriverVersion(self) -> bytes:
        return self._r.driver_version().encode()  # older pynvml returned bytes

    def nvmlSystemGetCudaDriverVersion(self) -> int:
        return self._r.cuda_driver_version()

    def nvmlDeviceGetCount(self) -> int:
        return 1

    def nvmlDeviceGetHandleByIndex(self, i: int) -> object:
        return ("handle", i)

    def nvmlDeviceGetName(self, h: object) -> str:
        return self._r.name(0)

    def nvmlDeviceGetUUID(self, h: object) -> str:
        return self._r.uuid(0)

    def nvmlDeviceGetPciInfo(self, h: object) -> object:
        return self._ns(busId=self._r.pci_bus_id(0).encode())

    def nvmlDeviceGetCudaComputeCapability(self, h: object) -> tuple[int, int]:
        return self._r.compute_capability(0)

    def nvmlDeviceGetMemoryInfo(self, h: object) -> object:
        total, used = self._r.memory_bytes(0)
        return self._ns(total=total, used=used, free=total - used)

    def nvmlDeviceGetUtilizationRates(self, h: object) -> object:
        g, m = self._r.utilization_pct(0)
        return self._ns(gpu=g, memory=m)

    def nvmlDeviceGetTemperature(self, h: object, sensor: int) -> int:
        return self._r.temperature_c(0)

    def nvmlDeviceGetPowerUsage(self, h: object) -> int:
        return self._r.power_mw(0)

    def nvmlDeviceGetClockInfo(self, h: object, kind: int) -> int:
        sm, mem = self._r.clocks_mhz(0)
        v = sm if kind == self.NVML_CLOCK_SM else mem
        if v is None:
            raise self.NVMLError(self.NVML_ERROR_NOT_SUPPORTED)
        return v


def test_pynvml_adapter_translation(replay_nvml) -> None:
    nv = PynvmlAdapter()
    nv._n = CaptureBackedPynvml(replay_nvml)  # type: ignore[assignment]
    assert probe_nvml(nv) == probe_nvml(replay_nvml)
    replay_nvml.seek(30)  # under load
    (s,) = NvmlSampler(nv, clock_ms=lambda: 1).sample()
    assert s.util_gpu_pct == 100 and s.power_mw > 600_000
    assert s.mem_clock_mhz is None  # NOT_SUPPORTED -> None, not an exception


def test_pynvml_adapter_other_errors_are_typed(replay_nvml) -> None:
    fake = CaptureBackedPynvml(replay_nvml)

    def lost(h: object) -> object:
        raise pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)

    fake.nvmlDeviceGetMemoryInfo = lost  # type: ignore[method-assign]
    nv = PynvmlAdapter()
    nv._n = fake  # type: ignore[assignment]
    with pytest.raises(NvmlError):
        nv.memory_bytes(nv.handle(0))
