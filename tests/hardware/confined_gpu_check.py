"""Real-GPU check of the confined runner: GPU isolation, full speed, VRAM given back on stop.

Run on a GPU host, as root, after `make setup` (bubblewrap from `make system-deps`):

    .venv/bin/python tests/hardware/confined_gpu_check.py [--job-python PY] [--seconds S]

PY needs torch built for CUDA (default: this interpreter); its installation is bound read-only
into the sandbox. Prints one PASS/FAIL line per check; exits 0 if all pass, 1 if any fails, 2 if
there is no GPU or the host cannot confine.

Checks:
1. the host confines (namespaces+cgroup), and the inventory maps each GPU to /dev/nvidia<minor>;
2. a confined job renting one GPU sees exactly one CUDA device, has only that GPU's node (plus
   the control nodes) in /dev, cannot open any other GPU's node, and nvidia-smi inside lists one;
3. a confined job renting no GPU has no NVIDIA node and CUDA finds no device;
4. throughput: the bf16 matmul job alone (plain subprocess) and confined with the NVML sampler
   beside it, alternating; mean ratio >= 0.99;
5. stop means stop: a confined job stopped mid-load is gone (cgroup empty) and its VRAM returns.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import trio

from rigmesh.exec import ConfinedRunner, Isolation, detect_confinement
from rigmesh.exec.confined import interpreter_paths
from rigmesh.exec.gpu import GpuInventory, PynvmlAdapter, probe
from rigmesh.exec.outbuf import OutputLine
from rigmesh.exec.runner import JobSpec, Limits, StopReason, run_to_completion
from rigmesh.exec.sandbox import read_nvidia_gpus
from rigmesh.exec.telemetry import NvmlSampler, TelemetrySample, run_sampler

MATMUL_PATH = Path(__file__).resolve().parent / "matmul_job.py"
MATMUL = MATMUL_PATH.read_bytes()  # given to confined jobs as an input file
results: list[tuple[str, bool, str]] = []

# Run inside the sandbox: what the job can see of the GPUs.
LOOK = """
import glob, json, os, subprocess
out = {"nodes": sorted(os.path.basename(p) for p in glob.glob("/dev/nvidia*"))}
opened = {}
for minor in range(16):
    try:
        os.close(os.open(f"/dev/nvidia{minor}", os.O_RDWR))
        opened[minor] = "ok"
    except OSError as e:
        opened[minor] = e.strerror
out["open"] = opened
try:
    import torch
    out["cuda_devices"] = torch.cuda.device_count()
except Exception as e:
    out["cuda_devices"] = repr(e)
try:
    smi = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=60)
    out["smi"] = [l for l in smi.stdout.splitlines() if l.startswith("GPU ")]
except OSError as e:
    out["smi"] = repr(e)
print(json.dumps(out), flush=True)
"""


def check(name: str, ok: bool, detail: str = "") -> None:
    results.append((name, ok, detail))
    print(f"{'PASS' if ok else 'FAIL'}  {name}  {detail}", flush=True)


def last_json(lines: list[bytes]) -> dict[str, object]:
    docs = [json.loads(x) for x in lines if x.startswith(b"{")]
    return docs[-1] if docs else {}


async def run_lines(runner: ConfinedRunner, spec: JobSpec) -> tuple[object, list[bytes]]:
    res, events = await run_to_completion(runner, spec)
    return res, [e.data for e in events if isinstance(e, OutputLine)]


async def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--job-python", default=sys.executable)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--pairs", type=int, default=2)
    args = ap.parse_args()

    res = await probe(job_dir=None)
    if not isinstance(res.gpu, GpuInventory):
        print("no GPU:", res.gpu.attempts)
        return 2
    inv = res.gpu
    conf = detect_confinement()
    print(conf.describe())
    check("host confines jobs", conf.isolation is Isolation.NAMESPACES_CGROUP, conf.isolation.value)
    if conf.isolation is Isolation.NONE:
        return 2
    nv_gpus = read_nvidia_gpus()
    by_uuid = {g.uuid: g for g in nv_gpus}
    check(
        "every GPU maps to a device node",
        all(g.uuid in by_uuid for g in inv.gpus),
        ", ".join(f"{g.uuid} -> /dev/nvidia{by_uuid[g.uuid].minor}" for g in nv_gpus),
    )
    gpu = inv.gpus[-1]  # the last one: on a multi-GPU host, not the one CUDA would pick first
    minor = by_uuid[gpu.uuid].minor
    runner = ConfinedRunner(confinement=conf, ro_paths=interpreter_paths(args.job_python))
    py = args.job_python

    # 2. one rented GPU: only its node, one CUDA device
    _, lines = await run_lines(runner, JobSpec(argv=(py, "-c", LOOK), gpus=(gpu.uuid,)))
    seen = last_json(lines)
    print("   job sees:", seen)
    opened = seen.get("open", {})
    assert isinstance(opened, dict)
    others = [m for m, v in opened.items() if int(m) != minor and v == "ok"]
    check(
        "confined job sees only its GPU",
        seen.get("cuda_devices") == 1
        and f"nvidia{minor}" in seen.get("nodes", [])  # type: ignore[operator]
        and not others
        and opened.get(str(minor)) == "ok",
        f"nodes {seen.get('nodes')}, smi {seen.get('smi')}",
    )
    # 3. no GPU rented: nothing
    _, lines = await run_lines(runner, JobSpec(argv=(py, "-c", LOOK)))
    seen = last_json(lines)
    check(
        "confined job without a GPU sees none",
        seen.get("nodes") == [] and seen.get("cuda_devices") == 0,
        str(seen.get("nodes")),
    )

    # 4. throughput, alternating alone / confined+sampler
    nv = PynvmlAdapter()
    nv.init()
    matmul = ("matmul_job.py", MATMUL)
    argv = (py, "-u", "matmul_job.py", str(args.seconds))

    async def alone() -> float:
        # The same script, as a plain subprocess of this process: the bare baseline.
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": gpu.uuid, "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
        p = await trio.run_process(
            [py, "-u", str(MATMUL_PATH), str(args.seconds)], capture_stdout=True, env=env
        )
        return float(json.loads(p.stdout.decode().strip().splitlines()[-1])["tflops"])

    async def confined() -> tuple[float, int]:
        spec = JobSpec(
            argv=argv,
            inputs=dict([matmul]),
            gpus=(gpu.uuid,),
            limits=Limits(wall_clock_s=args.seconds + 180),
        )
        got: list[TelemetrySample] = []
        lines: list[bytes] = []
        async with runner.start(spec) as job:
            sampler = NvmlSampler(nv, [gpu.index], job_procs=job.live_processes)
            async with trio.open_nursery() as n:
                n.start_soon(run_sampler, sampler, 1.0, got.extend)
                async for ev in job.output():
                    if isinstance(ev, OutputLine):
                        lines.append(ev.data)
                await job.wait()
                n.cancel_scope.cancel()
        return float(last_json(lines)["tflops"]), len(got)  # type: ignore[arg-type]

    ratios = []
    for i in range(args.pairs):
        a = await alone()
        b, nsamples = await confined()
        ratios.append(b / a)
        print(
            f"   pair {i + 1}: alone {a:.1f} TFLOP/s, confined+sampler {b:.1f} ({nsamples} samples)"
        )
    mean = statistics.mean(ratios)
    check("confined throughput >= 0.99 of bare", mean >= 0.99, f"mean ratio {mean:.4f}")

    # 5. stop mid-load: gone, VRAM back
    h = nv.handle(gpu.index)
    _, before = nv.memory_bytes(h)
    spec = JobSpec(argv=(py, "-u", "matmul_job.py", "600"), inputs=dict([matmul]), gpus=(gpu.uuid,))
    async with runner.start(spec) as job:
        async for ev in job.output():
            if isinstance(ev, OutputLine) and b'"load"' in ev.data:
                break
        await trio.sleep(2)
        _, during = nv.memory_bytes(h)
        t = time.monotonic()
        await job.stop()
        sres = await job.wait()
        stop_ms = (time.monotonic() - t) * 1000
    await trio.sleep(1)
    _, after = nv.memory_bytes(h)
    mib = 1 << 20
    check(
        "stop ends a confined GPU job and frees its VRAM",
        sres.reason is StopReason.STOPPED and sres.survivors == 0 and after - before < 256 * mib,
        f"stop took {stop_ms:.0f} ms; VRAM used MiB before/during/after "
        f"{before // mib}/{during // mib}/{after // mib}",
    )
    nv.shutdown()

    failed = [x for x in results if not x[1]]
    print(f"\n{len(results) - len(failed)}/{len(results)} checks passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(trio.run(main))
