"""A GPU workload for the runner: bf16 matmuls for a fixed time, then one JSON line of results.

Usage: python matmul_job.py [seconds=10] [n=8192]. Needs torch with CUDA. Run as a job through
rigmesh.exec.runner by tests/hardware/h100_check.py and tests/bench/bench_exec.py; it is also
plain enough to run by hand. Reports only what it measured itself, so the same numbers come out
whether it runs alone or beside the telemetry sampler.
"""

import json
import os
import sys
import time

import torch


def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 10.0
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 8192
    if not torch.cuda.is_available():
        print(
            json.dumps(
                {
                    "error": "no CUDA device visible",
                    "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES"),
                }
            )
        )
        sys.exit(3)
    dev = torch.device("cuda:0")
    a = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
    for _ in range(20):  # warm-up: cuBLAS heuristics, clocks up
        c = a @ b
    torch.cuda.synchronize()
    print(json.dumps({"phase": "load", "device": torch.cuda.get_device_name(0)}), flush=True)
    iters = 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for _ in range(20):
            c = a @ b
        torch.cuda.synchronize()
        iters += 20
    dt = time.perf_counter() - t0
    print(
        json.dumps(
            {
                "phase": "done",
                "device": torch.cuda.get_device_name(0),
                "visible_devices": torch.cuda.device_count(),
                "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES"),
                "n": n,
                "iters": iters,
                "seconds": round(dt, 4),
                "tflops": round(2 * n**3 * iters / dt / 1e12, 2),
                "checksum": float(c[0, 0]),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
