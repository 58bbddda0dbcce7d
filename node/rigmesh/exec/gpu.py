"""GPU and host probe: what this machine can offer.

Two sources, tried in order: NVML through nvidia-ml-py (`import pynvml`), then the `nvidia-smi`
executable (`-q -x` XML for the inventory, `--query-gpu` CSV for compute capability, which the XML
does not carry). No GPU is an answer, not an error: the probe returns `NoGpu` with the reasons and
the node can still offer CPU capacity from `HostInfo`.

NVML sits behind the small `NvmlLike` Protocol so tests and the simulator can replay real readings
(`ReplayNvml`, fed from an H100 capture) through the same code the node runs.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import trio

from rigmesh.market.listing import Hardware
from rigmesh.market.offer import Gpu

MiB = 1 << 20
#: A real NVML capture of an H100 (package data; `ReplayNvml.recorded_h100`).
RECORDED_H100 = Path(__file__).parent / "recordings" / "nvml-h100.json"
GiB = 1 << 30

# nvidia-smi columns we ask for; parsed by header name, so a missing column reads as None.
SMI_QUERY_FIELDS = (
    "index,uuid,name,memory.total,memory.used,utilization.gpu,utilization.memory,"
    "temperature.gpu,power.draw,clocks.sm,clocks.mem,driver_version,compute_cap,pci.bus_id"
)


class NvmlError(RuntimeError):
    """NVML failed for a reason other than 'this reading is not supported on this GPU'."""


class NvmlLike(Protocol):
    """The slice of NVML the probe and the sampler use.

    Readings that a GPU does not support return None (NVML's NOT_SUPPORTED); other failures raise
    NvmlError. Handles are opaque.
    """

    def init(self) -> None: ...

    def shutdown(self) -> None: ...

    def driver_version(self) -> str: ...

    def cuda_driver_version(self) -> int: ...  # e.g. 13000 for 13.0

    def device_count(self) -> int: ...

    def handle(self, index: int) -> object: ...

    def name(self, h: object) -> str: ...

    def uuid(self, h: object) -> str: ...

    def pci_bus_id(self, h: object) -> str | None: ...

    def compute_capability(self, h: object) -> tuple[int, int] | None: ...

    def memory_bytes(self, h: object) -> tuple[int, int]: ...  # (total, used)

    def utilization_pct(self, h: object) -> tuple[int, int] | None: ...  # (gpu, memory)

    def temperature_c(self, h: object) -> int | None: ...

    def power_mw(self, h: object) -> int | None: ...

    def clocks_mhz(self, h: object) -> tuple[int | None, int | None]: ...  # (sm, mem)


class PynvmlAdapter:
    """NvmlLike over the real NVML library (nvidia-ml-py)."""

    def __init__(self) -> None:
        import pynvml  # imported lazily: loading it is harmless, but keep import side-effect free

        self._n = pynvml

    def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return fn(*args)
        except self._n.NVMLError as e:
            if getattr(e, "value", None) == self._n.NVML_ERROR_NOT_SUPPORTED:
                return None
            raise NvmlError(str(e)) from e

    def _must(self, fn: Callable[..., Any], *args: Any) -> Any:
        v = self._call(fn, *args)
        if v is None:
            raise NvmlError(f"{fn.__name__} not supported")
        return v

    def init(self) -> None:
        try:
            self._n.nvmlInit()
        except self._n.NVMLError as e:  # library missing, driver not loaded, no permission
            raise NvmlError(str(e)) from e

    def shutdown(self) -> None:
        self._call(self._n.nvmlShutdown)

    def driver_version(self) -> str:
        return _s(self._must(self._n.nvmlSystemGetDriverVersion))

    def cuda_driver_version(self) -> int:
        return int(self._must(self._n.nvmlSystemGetCudaDriverVersion))

    def device_count(self) -> int:
        return int(self._must(self._n.nvmlDeviceGetCount))

    def handle(self, index: int) -> object:
        return self._must(self._n.nvmlDeviceGetHandleByIndex, index)

    def name(self, h: object) -> str:
        return _s(self._must(self._n.nvmlDeviceGetName, h))

    def uuid(self, h: object) -> str:
        return _s(self._must(self._n.nvmlDeviceGetUUID, h))

    def pci_bus_id(self, h: object) -> str | None:
        info = self._call(self._n.nvmlDeviceGetPciInfo, h)
        return None if info is None else _s(info.busId)

    def compute_capability(self, h: object) -> tuple[int, int] | None:
        cc = self._call(self._n.nvmlDeviceGetCudaComputeCapability, h)
        return None if cc is None else (int(cc[0]), int(cc[1]))

    def memory_bytes(self, h: object) -> tuple[int, int]:
        m = self._must(self._n.nvmlDeviceGetMemoryInfo, h)
        return int(m.total), int(m.used)

    def utilization_pct(self, h: object) -> tuple[int, int] | None:
        u = self._call(self._n.nvmlDeviceGetUtilizationRates, h)
        return None if u is None else (int(u.gpu), int(u.memory))

    def temperature_c(self, h: object) -> int | None:
        t = self._call(self._n.nvmlDeviceGetTemperature, h, self._n.NVML_TEMPERATURE_GPU)
        return None if t is None else int(t)

    def power_mw(self, h: object) -> int | None:
        p = self._call(self._n.nvmlDeviceGetPowerUsage, h)
        return None if p is None else int(p)

    def clocks_mhz(self, h: object) -> tuple[int | None, int | None]:
        sm = self._call(self._n.nvmlDeviceGetClockInfo, h, self._n.NVML_CLOCK_SM)
        mem = self._call(self._n.nvmlDeviceGetClockInfo, h, self._n.NVML_CLOCK_MEM)
        return (None if sm is None else int(sm)), (None if mem is None else int(mem))


def _s(v: object) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


class ReplayNvml:
    """NvmlLike that replays a capture (the JSON format of `RECORDED_H100`).

    One device per capture, readings from `samples[position]`; `advance()` moves to the next
    sample (wrapping), so a test or the simulator decides when time passes. Readings absent from
    the capture (the memory clock) answer None, like NVML's NOT_SUPPORTED.
    """

    def __init__(self, capture: dict[str, Any]) -> None:
        self.info: dict[str, Any] = capture["info"]
        self.samples: list[dict[str, Any]] = capture["samples_idle_load_idle"]
        if not self.samples:
            raise ValueError("capture has no samples")
        self.position = 0
        self.initialized = False

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> ReplayNvml:
        with open(path, encoding="utf-8") as f:
            return cls(json.load(f))

    @classmethod
    def recorded_h100(cls) -> ReplayNvml:
        """Real readings of an NVIDIA H100 80GB HBM3 (idle, bf16 load at 100 %, idle), shipped
        with the package: a provider without a GPU can demo a GPU offer, and tests and the
        simulator get realistic telemetry."""
        return cls.from_file(RECORDED_H100)

    def advance(self, steps: int = 1) -> None:
        self.position = (self.position + steps) % len(self.samples)

    def seek(self, index: int) -> None:
        self.position = index % len(self.samples)

    @property
    def current(self) -> dict[str, Any]:
        return self.samples[self.position]

    def init(self) -> None:
        self.initialized = True

    def shutdown(self) -> None:
        self.initialized = False

    def driver_version(self) -> str:
        return str(self.info["driver"])

    def cuda_driver_version(self) -> int:
        return int(self.info["cuda_driver"])

    def device_count(self) -> int:
        return int(self.info["count"])

    def handle(self, index: int) -> object:
        if not 0 <= index < self.device_count():
            raise NvmlError(f"no device {index}")
        return index

    def name(self, h: object) -> str:
        return str(self.info["name"])

    def uuid(self, h: object) -> str:
        return str(self.info["uuid"])

    def pci_bus_id(self, h: object) -> str | None:
        return self.info.get("pci")

    def compute_capability(self, h: object) -> tuple[int, int] | None:
        cc = self.info.get("cc")
        return None if cc is None else (int(cc[0]), int(cc[1]))

    def memory_bytes(self, h: object) -> tuple[int, int]:
        s = self.current
        return int(s["mem_total"]), int(s["mem_used"])

    def utilization_pct(self, h: object) -> tuple[int, int] | None:
        s = self.current
        return int(s["gpu_util"]), int(s["mem_util"])

    def temperature_c(self, h: object) -> int | None:
        return int(self.current["temp_c"])

    def power_mw(self, h: object) -> int | None:
        return int(self.current["power_mw"])

    def clocks_mhz(self, h: object) -> tuple[int | None, int | None]:
        s = self.current
        sm, mem = s.get("sm_clock_mhz"), s.get("mem_clock_mhz")
        return (None if sm is None else int(sm)), (None if mem is None else int(mem))


# -- probe results -----------------------------------------------------------------------------


@dataclass(frozen=True)
class GpuInfo:
    """One GPU as an offer describes it."""

    index: int
    name: str  # exactly as NVML reports it, e.g. "NVIDIA H100 80GB HBM3"
    uuid: str  # "GPU-3181bf17-..."
    vram_mib: int  # total framebuffer memory
    compute_capability: str | None  # "9.0"; None if the source could not tell
    pci_bus_id: str | None


@dataclass(frozen=True)
class GpuInventory:
    source: str  # "nvml" or "nvidia-smi"
    driver_version: str
    cuda_version: str | None  # highest CUDA version the driver supports, e.g. "13.0"
    gpus: tuple[GpuInfo, ...]

    @property
    def count(self) -> int:
        return len(self.gpus)


@dataclass(frozen=True)
class NoGpu:
    """No usable GPU; `attempts` says what each source answered, for the operator's log."""

    attempts: tuple[str, ...]


@dataclass(frozen=True)
class HostInfo:
    cpu_cores: int  # CPUs this process may run on
    ram_mib: int  # host RAM, capped by the cgroup memory limit when there is one
    disk_total_gib: int  # of the filesystem holding the job directories
    disk_free_gib: int


@dataclass(frozen=True)
class ProbeResult:
    host: HostInfo
    gpu: GpuInventory | NoGpu

    @property
    def capacity_kind(self) -> str:
        """What the node can offer: "gpu", or "cpu" when it has no usable GPU."""
        return "gpu" if isinstance(self.gpu, GpuInventory) and self.gpu.count else "cpu"

    def hardware(self, *, bandwidth_mbps: int = 1000) -> Hardware:
        """What an offer says of this host: all its GPUs as one group (the first GPU's model and
        VRAM; hosts mix models rarely, and a mixed host should list them separately), or none,
        and the host's cores, RAM and free disk."""
        gpu = None
        if isinstance(self.gpu, GpuInventory) and self.gpu.count:
            first = self.gpu.gpus[0]
            gpu = Gpu(
                model=first.name, vram_mib=first.vram_mib, count=self.gpu.count,
                compute_capability=first.compute_capability or "",
                driver=self.gpu.driver_version, cuda=self.gpu.cuda_version or "",
            )
        return Hardware(gpu=gpu, cpu_cores=self.host.cpu_cores, ram_mib=self.host.ram_mib,
                        disk_gib=self.host.disk_free_gib, bandwidth_mbps=bandwidth_mbps)


def cuda_version_str(v: int) -> str:
    """NVML's integer CUDA driver version (13000, 12040) as "13.0", "12.4"."""
    return f"{v // 1000}.{(v % 1000) // 10}"


def probe_nvml(nvml: NvmlLike) -> GpuInventory:
    """Inventory through NVML. Raises NvmlError; the caller decides about fallbacks."""
    nvml.init()
    gpus = []
    for i in range(nvml.device_count()):
        h = nvml.handle(i)
        cc = nvml.compute_capability(h)
        total, _ = nvml.memory_bytes(h)
        gpus.append(
            GpuInfo(
                index=i,
                name=nvml.name(h),
                uuid=nvml.uuid(h),
                vram_mib=total // MiB,
                compute_capability=None if cc is None else f"{cc[0]}.{cc[1]}",
                pci_bus_id=nvml.pci_bus_id(h),
            )
        )
    return GpuInventory(
        source="nvml",
        driver_version=nvml.driver_version(),
        cuda_version=cuda_version_str(nvml.cuda_driver_version()),
        gpus=tuple(gpus),
    )


class SmiParseError(ValueError):
    """nvidia-smi answered something we cannot read."""


def leading_int(text: str | None) -> int | None:
    """ "81559 MiB" -> 81559, "121.21 W" -> None (use milli_units), "N/A" -> None."""
    if text is None:
        return None
    head = text.strip().split(" ")[0]
    return int(head) if head.isdigit() else None


def milli_units(text: str | None) -> int | None:
    """ "121.21 W" -> 121210 (exact decimal arithmetic, no float rounding)."""
    if text is None:
        return None
    head = text.strip().split(" ")[0]
    whole, _, frac = head.partition(".")
    if not whole.isdigit() or (frac and not frac.isdigit()):
        return None
    return int(whole) * 1000 + int((frac + "000")[:3])


def parse_smi_xml(xml_text: str, compute_caps: dict[str, str] | None = None) -> GpuInventory:
    """Pure: `nvidia-smi -q -x` output -> inventory. `compute_caps` maps UUID -> "9.0"."""
    try:
        root = ET.fromstring(xml_text)
    except ET.ParseError as e:
        raise SmiParseError(f"bad XML: {e}") from e
    if root.tag != "nvidia_smi_log":
        raise SmiParseError(f"unexpected root <{root.tag}>")
    gpus = []
    for i, g in enumerate(root.findall("gpu")):
        uuid = g.findtext("uuid")
        name = g.findtext("product_name")
        vram = leading_int(g.findtext("fb_memory_usage/total"))
        if not uuid or not name or vram is None:
            raise SmiParseError(f"gpu {i}: missing uuid, product_name or fb_memory_usage/total")
        gpus.append(
            GpuInfo(
                index=i,  # XML order is the NVML index order (PCI bus order)
                name=name.strip(),
                uuid=uuid.strip(),
                vram_mib=vram,
                compute_capability=(compute_caps or {}).get(uuid.strip()),
                pci_bus_id=g.get("id") or g.findtext("pci/pci_bus_id"),
            )
        )
    cuda = root.findtext("cuda_version")
    return GpuInventory(
        source="nvidia-smi",
        driver_version=(root.findtext("driver_version") or "").strip(),
        cuda_version=cuda.strip() if cuda and cuda.strip() != "N/A" else None,
        gpus=tuple(gpus),
    )


def parse_smi_csv(csv_text: str) -> list[dict[str, str]]:
    """Pure: `nvidia-smi --query-gpu=... --format=csv` (with header) -> rows keyed by field name.

    Header cells look like "memory.total [MiB]"; keys drop the unit. Values keep theirs ("81559
    MiB"), so callers parse with the unit in view.
    """
    reader = csv.reader(io.StringIO(csv_text), skipinitialspace=True)
    rows = [r for r in reader if r]
    if not rows:
        raise SmiParseError("empty CSV")
    keys = [h.split(" [")[0].strip() for h in rows[0]]
    out = []
    for r in rows[1:]:
        if len(r) != len(keys):
            raise SmiParseError(f"row has {len(r)} cells, header has {len(keys)}")
        out.append({k: v.strip() for k, v in zip(keys, r, strict=True)})
    return out


async def run_smi(exe: str, args: Sequence[str], timeout_s: float) -> str:
    with trio.fail_after(timeout_s):
        proc = await trio.run_process([exe, *args], capture_stdout=True, capture_stderr=True)
    return proc.stdout.decode("utf-8", "replace")


async def probe_smi(exe: str = "nvidia-smi", timeout_s: float = 10.0) -> GpuInventory:
    """Inventory through the nvidia-smi executable. Raises OSError, CalledProcessError,
    trio.TooSlowError or SmiParseError."""
    xml_text = await run_smi(exe, ["-q", "-x"], timeout_s)
    caps: dict[str, str] = {}
    try:  # compute_cap is a query field since driver 510-ish; older drivers: leave it unknown
        rows = parse_smi_csv(
            await run_smi(exe, [f"--query-gpu={SMI_QUERY_FIELDS}", "--format=csv"], timeout_s)
        )
        caps = {r["uuid"]: r["compute_cap"] for r in rows if "uuid" in r and "compute_cap" in r}
    except Exception:  # any failure here only costs us the compute capability
        caps = {}
    return parse_smi_xml(xml_text, caps)


def host_info(job_dir: str | None = None) -> HostInfo:
    """CPU cores, RAM and disk of this host, as the job sandbox sees them."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path, encoding="ascii") as f:
                raw = f.read().strip()
        except OSError:
            continue
        if raw.isdigit():
            ram = min(ram, int(raw))  # a container's limit, not the host's RAM, is what we have
    du = shutil.disk_usage(job_dir or os.getcwd())
    return HostInfo(
        cpu_cores=cores,
        ram_mib=ram // MiB,
        disk_total_gib=du.total // GiB,
        disk_free_gib=du.free // GiB,
    )


async def probe(
    nvml: NvmlLike | None = None,
    *,
    use_real_nvml: bool = True,
    smi_exe: str | None = "nvidia-smi",
    job_dir: str | None = None,
) -> ProbeResult:
    """Probe GPUs (NVML first, then nvidia-smi) and the host. Never raises for 'no GPU'."""
    attempts: list[str] = []
    inv: GpuInventory | None = None
    if nvml is None and use_real_nvml:
        try:
            nvml = PynvmlAdapter()
        except ImportError as e:
            attempts.append(f"nvml: pynvml not importable: {e}")
    if nvml is not None:
        try:
            inv = probe_nvml(nvml)
            if not inv.count:
                attempts.append("nvml: 0 devices")
                inv = None
        except NvmlError as e:
            attempts.append(f"nvml: {e}")
    if inv is None and smi_exe is not None:
        exe = shutil.which(smi_exe)
        if exe is None:
            attempts.append(f"nvidia-smi: {smi_exe!r} not found")
        else:
            try:
                inv = await probe_smi(exe)
                if not inv.count:
                    attempts.append("nvidia-smi: 0 devices")
                    inv = None
            except Exception as e:  # any failure means 'no GPU from this source'
                attempts.append(f"nvidia-smi: {type(e).__name__}: {e}")
    host = await trio.to_thread.run_sync(host_info, job_dir)
    return ProbeResult(host=host, gpu=inv if inv is not None else NoGpu(tuple(attempts)))
