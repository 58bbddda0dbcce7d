"""Benchmark of the exec shell: what the runner and the telemetry sampler cost beside a job.

Run: .venv/bin/python tests/bench/bench_exec.py   (plain script, prints tables, exits 0, < 60 s)

With an NVIDIA GPU (NVML loads, torch with CUDA importable by --job-python): a bf16 matmul job's
throughput through the runner with the NVML sampler running at heartbeat rate, against the same job
run alone as a plain subprocess, alternating A/B to cancel drift. Target ratio >= 0.99.

Always (and on its own without a GPU): CPU cost of one telemetry sample through the replayed H100
NVML capture and through the nvidia-smi fallback (a fake nvidia-smi that prints the real capture:
subprocess cost without the driver's), the /proc scan the runner polls with, and job start-up
latency of `true` through subprocess.run, trio.run_process, SubprocessRunner and, where the host
can confine, ConfinedRunner (target: confinement adds <= 50 ms).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import cbor2
import trio

from rigmesh.exec import ConfinedRunner, Isolation, detect_confinement, proctree
from rigmesh.exec.gpu import GpuInventory, PynvmlAdapter, ReplayNvml, probe
from rigmesh.exec.runner import JobSpec, Limits, SubprocessRunner, run_to_completion
from rigmesh.exec.telemetry import NvmlSampler, SmiSampler, run_sampler
from rigmesh.rental.evidence import TelemetrySample

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "exec" / "fixtures"
MATMUL = ROOT / "tests" / "hardware" / "matmul_job.py"


def table(title: str, header: tuple[str, ...], rows: list[tuple[object, ...]]) -> None:
    cells = [tuple(str(c) for c in header)] + [tuple(str(c) for c in r) for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    print(f"\n{title}")
    for k, r in enumerate(cells):
        print(
            "  "
            + "  ".join(
                c.rjust(w) if i else c.ljust(w)
                for i, (c, w) in enumerate(zip(r, widths, strict=True))
            )
        )
        if k == 0:
            print("  " + "  ".join("-" * w for w in widths))


def children_cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def bench_nvml_replay(n: int) -> tuple[float, float, float]:
    nv = ReplayNvml.recorded_h100()
    nv.init()
    sampler = NvmlSampler(nv, job_procs=lambda: 1)
    c0, w0 = time.process_time(), time.perf_counter()
    for _ in range(n):
        sampler.sample()
        nv.advance()
    per_sample_cpu = (time.process_time() - c0) / n
    per_sample_wall = (time.perf_counter() - w0) / n
    s = sampler.sample()[0]
    c0 = time.process_time()
    for _ in range(n):
        cbor2.dumps(s.to_cbor_map(), canonical=True)
    per_encode = (time.process_time() - c0) / n
    return per_sample_wall, per_sample_cpu, per_encode


async def bench_smi(fake: str, n: int) -> tuple[float, float]:
    sampler = SmiSampler(fake)
    await sampler.sample()  # page cache warm
    c0, k0, w0 = time.process_time(), children_cpu_s(), time.perf_counter()
    for _ in range(n):
        await sampler.sample()
    wall = (time.perf_counter() - w0) / n
    cpu = (time.process_time() - c0 + children_cpu_s() - k0) / n
    return wall, cpu


def bench_tree_tracking(n: int) -> tuple[float, float, int, int]:
    """CPU per poll of a 10-process tree (children walk), and per host /proc listing."""
    procs = [subprocess.Popen(["sleep", "30"]) for _ in range(9)]
    try:
        tracker = proctree.TreeTracker(os.getpid())  # this process plays the job's root
        c0 = time.process_time()
        for _ in range(n):
            live = tracker.poll()
        per_poll = (time.process_time() - c0) / n
        c0 = time.process_time()
        for _ in range(20):
            lst = proctree.listing()
        per_listing = (time.process_time() - c0) / 20
        return per_poll, per_listing, len(live), len(lst)
    finally:
        for p in procs:
            p.kill()
            p.wait()


async def bench_startup(n: int) -> tuple[list[tuple[str, float, float]], str]:
    """Median start-to-result time of `true` through each path, interleaved in one run so load
    from other processes hits all alike. Returns the rows and why confined rows are missing."""
    sub_runner = SubprocessRunner()
    spec = JobSpec(argv=("true",), limits=Limits(poll_interval_s=0.1))
    conf = detect_confinement()
    confined: list[tuple[str, ConfinedRunner]] = []
    why = ""
    if conf.isolation is Isolation.NONE:
        why = "; ".join(conf.reasons)
    else:
        confined.append(
            (
                f"ConfinedRunner (cgroups {conf.cgroups.version.value if conf.cgroups else 'none'}"
                f", {'per-job ext4 image' if conf.disk_hard else 'disk polled'})",
                ConfinedRunner(confinement=conf),
            )
        )
        if conf.disk_hard:
            confined.append(
                (
                    "  the same, disk polled instead of a per-job ext4 image",
                    ConfinedRunner(confinement=conf, hard_disk=False),
                )
            )
    paths: list[tuple[str, Callable[[], Awaitable[object]]]] = [
        (
            "subprocess.run",
            lambda: trio.to_thread.run_sync(lambda: subprocess.run(["true"], check=True)),
        ),
        ("trio.run_process", lambda: trio.run_process(["true"])),
        (
            "SubprocessRunner (start..result, workdir made+removed)",
            lambda: run_to_completion(sub_runner, spec),
        ),
    ]
    for name, r in confined:
        paths.append((name, lambda r=r: run_to_completion(r, spec)))  # type: ignore[misc]
    times: dict[str, list[float]] = {name: [] for name, _ in paths}
    for _ in range(n):
        for name, fn in paths:
            t = time.perf_counter()
            out = await fn()
            times[name].append(time.perf_counter() - t)
            if isinstance(out, tuple):
                assert out[0].ok, out[0]
    return [(name, statistics.median(ts), min(ts)) for name, ts in times.items()], why


async def gpu_throughput(
    inv: GpuInventory, job_python: str, seconds: float, pairs: int, heartbeat_s: float
) -> None:
    gpu = inv.gpus[0]
    job_argv = (job_python, "-u", str(MATMUL), str(seconds))
    nv = PynvmlAdapter()
    nv.init()

    async def alone() -> float:
        env = dict(os.environ, CUDA_VISIBLE_DEVICES=gpu.uuid, CUDA_DEVICE_ORDER="PCI_BUS_ID")
        proc = await trio.run_process(list(job_argv), capture_stdout=True, env=env)
        return float(json.loads(proc.stdout.decode().strip().splitlines()[-1])["tflops"])

    async def with_sampler() -> tuple[float, int]:
        spec = JobSpec(argv=job_argv, gpus=(gpu.uuid,), limits=Limits(wall_clock_s=seconds + 120))
        got: list[TelemetrySample] = []
        lines: list[bytes] = []
        async with SubprocessRunner().start(spec) as job:
            sampler = NvmlSampler(nv, [gpu.index], job_procs=job.live_processes)
            async with trio.open_nursery() as n:
                n.start_soon(run_sampler, sampler, heartbeat_s, got.extend)
                async for ev in job.output():
                    lines.append(getattr(ev, "data", b""))
                await job.wait()
                n.cancel_scope.cancel()
        done = [json.loads(x) for x in lines if x.startswith(b"{") and b'"done"' in x]
        return float(done[-1]["tflops"]), len(got)

    rows = []
    for i in range(pairs):
        a = await alone()
        b, nsamples = await with_sampler()
        rows.append((i + 1, f"{a:.1f}", f"{b:.1f}", nsamples, f"{b / a:.4f}"))
    ratios = [float(r[-1]) for r in rows]
    table(
        f"bf16 matmul on {gpu.name} ({seconds:.0f} s per run, NVML sample every {heartbeat_s} s)",
        ("pair", "alone TFLOP/s", "runner+sampler TFLOP/s", "samples", "ratio"),
        rows,
    )
    mean = statistics.mean(ratios)
    print(f"  mean ratio {mean:.4f} (target >= 0.99): {'OK' if mean >= 0.99 else 'BELOW TARGET'}")
    nv.shutdown()


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--job-python", default=sys.executable, help="interpreter with torch for the GPU job"
    )
    ap.add_argument("--seconds", type=float, default=6.0, help="GPU job length")
    ap.add_argument("--pairs", type=int, default=2)
    ap.add_argument("--heartbeat", type=float, default=1.0, help="telemetry interval, seconds")
    args = ap.parse_args()
    t_start = time.perf_counter()

    res = await probe(job_dir=None)
    if isinstance(res.gpu, GpuInventory):
        print(
            f"GPU: {res.gpu.count} x {res.gpu.gpus[0].name} via {res.gpu.source}, "
            f"driver {res.gpu.driver_version}, CUDA {res.gpu.cuda_version}"
        )
    else:
        print(
            "GPU: none on this machine, so no throughput comparison "
            f"({'; '.join(res.gpu.attempts)})"
        )
    h = res.host
    print(
        f"host: {h.cpu_cores} CPU cores, {h.ram_mib} MiB RAM, disk {h.disk_free_gib}/"
        f"{h.disk_total_gib} GiB free"
    )

    wall, cpu, enc = bench_nvml_replay(2000)
    fake = str(FIXTURES / "fake-nvidia-smi")
    smi_wall, smi_cpu = await bench_smi(fake, 20)
    poll_cpu, listing_cpu, njob, nhost = bench_tree_tracking(200)
    hb = args.heartbeat
    table(
        f"telemetry cost per sample (1 GPU), and as a share of one core at 1 sample / {hb:g} s",
        ("path", "wall", "CPU", "CPU share"),
        [
            (
                "NVML sampler over replayed H100 capture",
                f"{wall * 1e6:.0f} us",
                f"{cpu * 1e6:.0f} us",
                f"{cpu / hb:.5%}",
            ),
            (
                "  + to_cbor_map + canonical CBOR encode",
                "",
                f"{enc * 1e6:.0f} us",
                f"{enc / hb:.5%}",
            ),
            (
                "nvidia-smi fallback (fake smi: real fork/exec+parse)",
                f"{smi_wall * 1e3:.1f} ms",
                f"{smi_cpu * 1e3:.1f} ms",
                f"{smi_cpu / hb:.3%}",
            ),
            (
                f"runner tree poll, {njob}-process job, every 0.25 s",
                "",
                f"{poll_cpu * 1e6:.0f} us",
                f"{poll_cpu / 0.25:.3%}",
            ),
            (
                f"/proc listing of {nhost} processes, once per job",
                "",
                f"{listing_cpu * 1e3:.1f} ms",
                "",
            ),
        ],
    )
    print("  note: the replay makes no driver calls; real NVML adds its ioctls (see a GPU host)")

    rows, why_not = await bench_startup(15)
    base = rows[1][1]
    a = proctree.listing()
    await trio.sleep(0.5)
    b = proctree.listing()
    churn = sum(1 for p, ino in b.items() if a.get(p) != ino)
    table(
        "start-up latency: spawn `true` and get its result (15 runs of each, interleaved)",
        ("path", "median", "min", "median vs trio.run_process"),
        [
            (name, f"{t * 1e3:.2f} ms", f"{m * 1e3:.2f} ms", f"{t / base:.2f}x")
            for name, t, m in rows
        ],
    )
    if len(rows) > 3:
        added = (rows[3][1] - rows[2][1]) * 1e3
        verdict = "OK" if added <= 50 else "OVER TARGET"
        print(
            f"  confinement adds {added:.1f} ms (medians; {(rows[3][2] - rows[2][2]) * 1e3:.1f} ms"
            f" best case) to a job's start and end (target <= 50 ms): {verdict}"
        )
    else:
        print(f"  confined runner not measured: {why_not}")
    print(
        f"  host: {len(b)} processes, {churn} new ones in 0.5 s, load {os.getloadavg()[0]:.1f}."
        "\n  The subprocess runner's fixed cost per job is a /proc listing before the spawn and,"
        "\n  when the root exits by itself, one environment read per process started during the"
        "\n  job (the net for orphans), so it grows with host size and process churn. The"
        "\n  confined runner's is bubblewrap's namespaces and mounts, the cgroup directories and"
        "\n  writes, and (as root) a copy of a formatted disk image and its mount; no /proc net."
    )

    if isinstance(res.gpu, GpuInventory):
        try:
            check = subprocess.run(
                [args.job_python, "-c", "import torch; assert torch.cuda.is_available()"],
                capture_output=True,
                timeout=60,
            )
            if check.returncode != 0:
                print(f"\nGPU throughput skipped: {args.job_python} has no torch with CUDA")
            else:
                await gpu_throughput(res.gpu, args.job_python, args.seconds, args.pairs, hb)
        except (OSError, subprocess.TimeoutExpired) as e:
            print(f"\nGPU throughput skipped: {e}")
    print(f"\ntotal bench time {time.perf_counter() - t_start:.1f} s")


if __name__ == "__main__":
    if shutil.which("true") is None:
        sys.exit("needs `true` on PATH")
    trio.run(main)
