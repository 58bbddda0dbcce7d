"""Real-hardware check of rigmesh.exec on a machine with an NVIDIA GPU (written for an H100).

README: on a GPU host, `.venv/bin/python tests/hardware/h100_check.py [--job-python PY]`, where PY
is an interpreter with torch built for CUDA (default: this one). Prints what it finds and a
PASS/FAIL line per check; exits 0 only if all pass, 2 if there is no GPU at all.

Checks, in order:
1. probe: NVML inventory (name, VRAM MiB, compute capability, driver, CUDA, UUID) and, where the
   nvidia-smi executable exists, the same fields through the fallback path; the two must agree.
2. a bf16 matmul job through SubprocessRunner with the assigned GPU (CUDA_VISIBLE_DEVICES=UUID),
   the NVML telemetry sampler running beside it; prints samples; the evidence checker's verdict
   over the window must say present, VRAM ok, alive and busy.
3. with no GPU assigned, the same job sees no CUDA device.
4. stop means stop on a GPU job: stop it mid-load; the tree is gone and the job's VRAM returns.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import cbor2
import trio

from rigmesh.exec.gpu import GpuInventory, PynvmlAdapter, probe, probe_nvml, probe_smi
from rigmesh.exec.outbuf import OutputLine
from rigmesh.exec.runner import JobSpec, Limits, StopReason, SubprocessRunner
from rigmesh.exec.telemetry import NvmlSampler, run_sampler
from rigmesh.rental.evidence import RentedGpus, TelemetrySample, check_window

MATMUL = Path(__file__).resolve().parent / "matmul_job.py"
results: list[tuple[str, bool, str]] = []


def check(name: str, ok: bool, detail: str = "") -> None:
    results.append((name, ok, detail))
    print(f"{'PASS' if ok else 'FAIL'}  {name}  {detail}")


async def run_job_with_telemetry(
    runner: SubprocessRunner, spec: JobSpec, sampler_nvml: PynvmlAdapter, index: int, every: float
) -> tuple[object, list[bytes], list[TelemetrySample]]:
    samples: list[TelemetrySample] = []
    lines: list[bytes] = []
    async with runner.start(spec) as job:
        sampler = NvmlSampler(sampler_nvml, [index], job_procs=job.live_processes)
        async with trio.open_nursery() as n:
            n.start_soon(run_sampler, sampler, every, samples.extend)
            async for ev in job.output():
                if isinstance(ev, OutputLine):
                    lines.append(ev.data)
                    print("   job|", ev.stream.value, ev.data.decode(errors="replace").rstrip())
            res = await job.wait()
            n.cancel_scope.cancel()
    return res, lines, samples


async def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--job-python", default=sys.executable)
    ap.add_argument("--seconds", type=float, default=10.0)
    args = ap.parse_args()

    res = await probe()
    print("host:", res.host)
    if not isinstance(res.gpu, GpuInventory):
        print("no GPU:", res.gpu.attempts)
        return 2
    inv = res.gpu
    print(f"inventory via {inv.source}: driver {inv.driver_version}, CUDA {inv.cuda_version}")
    for g in inv.gpus:
        print("  ", g)
    check("probe found a GPU through NVML", inv.source == "nvml", inv.source)
    gpu = inv.gpus[0]
    check(
        "compute capability read", gpu.compute_capability is not None, str(gpu.compute_capability)
    )

    if shutil.which("nvidia-smi"):
        smi = await probe_smi(shutil.which("nvidia-smi") or "nvidia-smi")
        print("inventory via nvidia-smi:", smi)
        check("nvidia-smi fallback agrees with NVML", smi.gpus == inv.gpus, "")
    else:
        print("nvidia-smi not on PATH: fallback path not checked")

    nv = PynvmlAdapter()
    nv.init()
    probe_nvml(nv)
    runner = SubprocessRunner()
    job_argv = (args.job_python, "-u", str(MATMUL), str(args.seconds))

    # 2. the real workload through the runner, telemetry beside it
    spec = JobSpec(argv=job_argv, gpus=(gpu.uuid,), limits=Limits(wall_clock_s=args.seconds + 180))
    t0 = time.time()
    jres, lines, samples = await run_job_with_telemetry(runner, spec, nv, gpu.index, 0.5)
    print("result:", jres)
    for s in samples:
        print(
            f"   t+{(s.t_ms / 1000 - t0):6.2f}s util {s.util_gpu_pct}% mem {s.mem_used_mib} MiB "
            f"power {s.power_mw} mW temp {s.temp_c} C sm {s.sm_clock_mhz} MHz "
            f"memclk {s.mem_clock_mhz} MHz procs {s.job_procs}"
        )
    done = [json.loads(x) for x in lines if x.startswith(b"{") and b'"done"' in x]
    check("matmul job exited 0 through the runner", jres.ok, str(jres.reason))
    if done:
        check(
            "job saw exactly its one assigned GPU",
            done[-1]["visible_devices"] == 1,
            f"{done[-1]['tflops']} TFLOP/s bf16",
        )
    busy = [s for s in samples if (s.util_gpu_pct or 0) >= 90]
    check("telemetry shows the load (>= 90 % util)", len(busy) >= 3, f"{len(busy)} busy samples")
    load_window = [s for s in samples if s.job_procs]
    verdict = check_window(
        load_window,
        RentedGpus(model=gpu.name, vram_mib=gpu.vram_mib, uuids=(gpu.uuid,)),
        now_ms=max(s.t_ms for s in samples) + 1,
    )
    print("verdict:", verdict)
    check("evidence verdict ok and busy", verdict.ok and bool(verdict.gpu_busy), "")
    enc = [len(cbor2.dumps(s.to_cbor_map(), canonical=True)) for s in samples]
    print(f"sample CBOR size {min(enc)}..{max(enc)} bytes")

    # 3. no GPU assigned: CUDA must see none
    spec = JobSpec(argv=(*job_argv[:3], "1"), gpus=())
    async with runner.start(spec) as job:
        out = [ev.data async for ev in job.output() if isinstance(ev, OutputLine)]
        nres = await job.wait()
    check(
        "no GPU assigned -> no CUDA device",
        nres.exit_code == 3 and any(b"no CUDA device" in x for x in out),
        str(nres.reason),
    )

    # 4. stop mid-load: tree gone, VRAM returned
    h = nv.handle(gpu.index)
    _, used_before = nv.memory_bytes(h)
    spec = JobSpec(argv=(*job_argv[:3], "600"), gpus=(gpu.uuid,))
    async with runner.start(spec) as job:
        async for ev in job.output():
            if isinstance(ev, OutputLine) and b'"load"' in ev.data:
                break
        await trio.sleep(2)
        _, used_during = nv.memory_bytes(h)
        t = time.monotonic()
        await job.stop()
        sres = await job.wait()
        stop_ms = (time.monotonic() - t) * 1000
    await trio.sleep(1)
    _, used_after = nv.memory_bytes(h)
    mib = 1 << 20
    check(
        "stop kills a GPU job and frees its VRAM",
        sres.reason is StopReason.STOPPED
        and sres.survivors == 0
        and used_after - used_before < 256 * mib,
        f"stop took {stop_ms:.0f} ms; VRAM used MiB before/during/after "
        f"{used_before // mib}/{used_during // mib}/{used_after // mib}",
    )
    nv.shutdown()

    failed = [r for r in results if not r[1]]
    print(f"\n{len(results) - len(failed)}/{len(results)} checks passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(trio.run(main))
