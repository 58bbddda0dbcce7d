"""The confined runner's pure planning: cgroup layouts and writes (v1 and v2), the bubblewrap
command line, GPU device nodes, network routes, the v2 device program. No root needed, except
the last test, which loads the device program into the kernel where it can."""

from __future__ import annotations

import os
import struct
import subprocess
import sys

import pytest

from rigmesh.exec import bpfdev
from rigmesh.exec.cgroups import (
    BASE_DEVICES,
    CgroupLayout,
    CgroupLimits,
    CgroupVersion,
    DeviceRule,
    JobCgroup,
    find_layout,
    needs_leaf,
    parse_flat_keyed,
    parse_mountinfo,
    parse_proc_cgroup,
    plan_job,
)
from rigmesh.exec.sandbox import (
    JOB_DIR,
    NvidiaGpu,
    SandboxError,
    SandboxSpec,
    blocked_routes,
    bwrap_status,
    find_command,
    host_path,
    parse_nvidia_information,
    plan_bwrap,
    plan_gpu_nodes,
    route_batch,
)

# This project's CI machine kind: cgroup v1 controllers, an empty unified mount (hybrid).
HYBRID_MOUNTINFO = """\
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
36 31 0:33 / /sys/fs/cgroup/devices rw,relatime - cgroup cgroup rw,devices
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""
HYBRID_CGROUP = """\
9:name=systemd:/
8:pids:/
5:devices:/
4:memory:/process_api/abc
2:cpuacct:/
1:cpu:/
6:freezer:/
0::/
"""
# A systemd host: one unified hierarchy; the node runs in a delegated service cgroup.
UNIFIED_MOUNTINFO = "30 24 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"
UNIFIED_CGROUP = "0::/system.slice/rigmesh.service\n"


def test_mountinfo_and_proc_cgroup() -> None:
    mounts = parse_mountinfo(HYBRID_MOUNTINFO)
    assert [m.mount_point for m in mounts][-1] == "/sys/fs/cgroup/unified"
    assert {c for m in mounts for c in m.controllers} >= {"memory", "pids", "name=systemd"}
    own = parse_proc_cgroup(HYBRID_CGROUP)
    assert own["memory"] == "/process_api/abc" and own[""] == "/" and own["pids"] == "/"
    # Combined hierarchies and escaped mount points.
    m = parse_mountinfo(
        r"1 2 0:1 / /sys/fs/cgroup/cpu\040acct rw - cgroup cgroup rw,cpu,cpuacct" + "\n"
    )
    assert m[0].mount_point == "/sys/fs/cgroup/cpu acct"
    assert m[0].controllers == {"cpu", "cpuacct"}


def test_layout_v1_on_a_hybrid_host() -> None:
    layout, why = find_layout(parse_mountinfo(HYBRID_MOUNTINFO), parse_proc_cgroup(HYBRID_CGROUP))
    assert layout is not None and layout.version is CgroupVersion.V1 and why == []
    # Below the node's own cgroup in every hierarchy.
    assert layout.parents["memory"] == "/sys/fs/cgroup/memory/process_api/abc"
    assert layout.parents["pids"] == "/sys/fs/cgroup/pids"


def test_layout_v2_on_a_unified_host() -> None:
    mounts = parse_mountinfo(UNIFIED_MOUNTINFO)
    own = parse_proc_cgroup(UNIFIED_CGROUP)
    layout, why = find_layout(mounts, own)
    assert layout is None and "not enabled" in why[0]  # controllers unknown until read
    with_ctrls = [
        m.__class__(m.mount_point, m.root, m.version, frozenset({"memory", "pids", "cpu"}))
        for m in mounts
    ]
    layout, _ = find_layout(with_ctrls, own)
    assert layout is not None and layout.version is CgroupVersion.V2
    assert layout.parents == {"": "/sys/fs/cgroup/system.slice/rigmesh.service"}


def test_layout_in_a_container_whose_mount_root_is_its_own_cgroup() -> None:
    mi = "5 1 0:3 /docker/abc /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n"
    for c in ("pids", "cpu", "cpuacct", "devices", "freezer"):
        mi += f"6 1 0:4 /docker/abc /sys/fs/cgroup/{c} rw - cgroup cgroup rw,{c}\n"
    own = parse_proc_cgroup(
        "".join(
            f"{i}:{c}:/docker/abc\n"
            for i, c in enumerate(("memory", "pids", "cpu", "cpuacct", "devices", "freezer"))
        )
    )
    layout, _ = find_layout(parse_mountinfo(mi), own)
    assert layout is not None and layout.parents["memory"] == "/sys/fs/cgroup/memory"


def test_plan_v1_writes_in_order() -> None:
    layout, _ = find_layout(parse_mountinfo(HYBRID_MOUNTINFO), parse_proc_cgroup(HYBRID_CGROUP))
    assert layout is not None
    gpu = DeviceRule("c", 195, 3)
    plan = plan_job(layout, "rigmesh.n.j1", CgroupLimits(64 << 20, 18, 1.5, (*BASE_DEVICES, gpu)))
    w = [
        (p.removeprefix("/sys/fs/cgroup/"), v)
        for p, v, _ in ((x.path, x.value, x.optional) for x in plan.writes)
    ]
    assert w[:6] == [
        ("memory/process_api/abc/rigmesh.n.j1/memory.limit_in_bytes", str(64 << 20)),
        ("memory/process_api/abc/rigmesh.n.j1/memory.memsw.limit_in_bytes", str(64 << 20)),
        ("pids/rigmesh.n.j1/pids.max", "18"),
        ("cpu/rigmesh.n.j1/cpu.cfs_period_us", "100000"),
        ("cpu/rigmesh.n.j1/cpu.cfs_quota_us", "150000"),
        ("devices/rigmesh.n.j1/devices.deny", "a"),  # deny everything, then allow the list
    ]
    allowed = [v for p, v in w if p.endswith("devices.allow")]
    assert allowed[-1] == "c 195:3 rwm" and "c 136:* rwm" in allowed and len(allowed) == 9
    assert len(plan.procs_files) == 6 and all(f.endswith("/cgroup.procs") for f in plan.procs_files)
    assert plan.devices is None  # v1: the devices controller, no BPF


def test_plan_v2_against_a_stand_in_cgroup_fs(tmp_path) -> None:
    """The v2 plan, performed on a temporary directory standing in for the cgroup fs, and the
    counters read back the way the kernel writes them."""
    layout = CgroupLayout(CgroupVersion.V2, {"": str(tmp_path)}, mount_point=str(tmp_path))
    rules = (*BASE_DEVICES, DeviceRule("c", 195, 0))
    plan = plan_job(layout, "rigmesh.n.j2", CgroupLimits(1 << 30, 258, 0.5, rules))
    job = tmp_path / "rigmesh.n.j2"
    assert plan.mkdirs == (str(job),) and plan.procs_files == (f"{job}/cgroup.procs",)
    for d in plan.mkdirs:
        os.mkdir(d)
    for wr in plan.writes:  # a real cgroupfs has these files; the stand-in gets them made
        with open(wr.path, "a") as f:
            f.write(wr.value + "\n")
    files = {
        p.relative_to(tmp_path).as_posix(): p.read_text()
        for p in tmp_path.rglob("*")
        if p.is_file()
    }
    assert files == {
        "cgroup.subtree_control": "+memory +pids +cpu\n",
        "rigmesh.n.j2/memory.max": f"{1 << 30}\n",
        "rigmesh.n.j2/memory.swap.max": "0\n",
        "rigmesh.n.j2/memory.oom.group": "1\n",
        "rigmesh.n.j2/pids.max": "258\n",
        "rigmesh.n.j2/cpu.max": "50000 100000\n",
    }
    assert plan.devices == rules  # v2: the device list goes to the BPF program
    for name, text in {
        "memory.current": "1234\n",
        "memory.peak": "99999\n",
        "memory.events": "low 0\nhigh 0\nmax 7\noom 1\noom_kill 1\noom_group_kill 1\n",
        "pids.current": "5\n",
        "pids.peak": "9\n",
        "pids.events": "max 3\n",
        "cpu.stat": "usage_usec 250000\nuser_usec 200000\nsystem_usec 50000\n",
        "cgroup.procs": "41\n42\n",
    }.items():
        (job / name).write_text(text)
    cg = JobCgroup(plan)
    c = cg.counters()
    assert (c.memory_bytes, c.memory_peak_bytes, c.oom_kills) == (1234, 99999, 1)
    assert (c.processes, c.pids_peak, c.forks_refused, c.cpu_ns) == (5, 9, 3, 250_000_000)
    assert cg.procs() == {41, 42}
    assert cg.oom_eventfd() is None  # v2: memory.oom.group kills the job, no registration


def test_v2_node_moves_into_a_leaf_only_when_alone() -> None:
    assert needs_leaf({42}, 42)
    assert not needs_leaf({42, 43}, 42)  # others there: moving ourselves would not help
    assert not needs_leaf(set(), 42)  # empty: controllers can be enabled as it is


def test_plan_rejects_a_path_as_name() -> None:
    layout = CgroupLayout(CgroupVersion.V2, {"": "/x"})
    for bad in ("", "..", "a/b"):
        with pytest.raises(ValueError):
            plan_job(layout, bad, CgroupLimits())


def test_flat_keyed_and_oom_control() -> None:
    assert parse_flat_keyed("oom_kill_disable 0\nunder_oom 0\noom_kill 2\n")["oom_kill"] == 2


# -- the sandbox ---------------------------------------------------------------------------------

SYSTEM = (("usr", None), ("etc", None), ("bin", "usr/bin"), ("lib64", "usr/lib64"))


def spec(**kw: object) -> SandboxSpec:
    base: dict[str, object] = {"argv": ("python3", "-c", "1"), "workdir": "/jobs/w1"}
    base["system"] = SYSTEM
    base.update(kw)
    return SandboxSpec(**base)  # type: ignore[arg-type]


def test_bwrap_command_line() -> None:
    a = plan_bwrap("/usr/bin/bwrap", spec(ro_paths=(("/stage/0", "/opt/py"),)))
    for flag in (
        "--unshare-user",
        "--unshare-pid",
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-net",
        "--unshare-cgroup",
        "--disable-userns",
        "--new-session",
    ):
        assert flag in a
    assert "--die-with-parent" not in a and "--share-net" not in a
    binds = [(a[i], a[i + 1], a[i + 2]) for i, x in enumerate(a) if x.endswith("bind")]
    assert binds == [
        ("--ro-bind", "/usr", "/usr"),
        ("--ro-bind", "/etc", "/etc"),
        ("--ro-bind", "/stage/0", "/opt/py"),
        ("--bind", "/jobs/w1", JOB_DIR),
        ("--bind", "/jobs/w1/tmp", "/tmp"),
    ]  # nothing of /home, /root, /var, /run, /sys, the node's directories
    assert a[a.index("--symlink") + 1 : a.index("--symlink") + 3] == ["usr/bin", "/bin"]
    # Root read-only once built; /dev too but for its shm; the command after "--".
    end = a.index("--")
    assert a[end - 2 : end] == ["--remount-ro", "/"] or "--remount-ro" in a[end - 6 : end]
    assert a[a.index("/dev/shm") + 1 : a.index("/dev/shm") + 3] == ["--remount-ro", "/dev"]
    assert a[end + 1 :] == ["python3", "-c", "1"]
    assert "--info-fd" not in a and "--block-fd" not in a and "--ro-bind-data" not in a


def test_bwrap_command_line_for_outbound_and_gpus() -> None:
    dev = plan_gpu_nodes(
        ["GPU-b"],
        [NvidiaGpu("GPU-a", 0, "0000:01:00.0"), NvidiaGpu("GPU-b", 1, "0000:02:00.0")],
        {"nvidia0": (195, 0), "nvidia1": (195, 1), "nvidiactl": (195, 255)},
    )
    a = plan_bwrap(
        "bwrap",
        spec(devices=dev[0], hidden=dev[1], bind_sys=True, resolv_conf_fd=7, info_fd=8, block_fd=9),
    )
    dev_binds = [a[i + 1] for i, x in enumerate(a) if x == "--dev-bind"]
    assert dev_binds == ["/dev/nvidia1", "/dev/nvidiactl"]
    assert a[a.index("--tmpfs") + 1] == "/proc/driver/nvidia/gpus/0000:01:00.0"
    assert a[a.index("/sys") - 1 : a.index("/sys") + 2] == ["--ro-bind", "/sys", "/sys"]
    assert a[a.index("--ro-bind-data") + 1 : a.index("--ro-bind-data") + 3] == [
        "7",
        "/etc/resolv.conf",
    ]
    assert a[a.index("--info-fd") + 1] == "8" and a[a.index("--block-fd") + 1] == "9"


def test_gpu_nodes_only_the_rented_and_controls() -> None:
    gpus = [NvidiaGpu(f"GPU-{i}", i, f"0000:0{i}:00.0") for i in range(4)]
    present = {f"nvidia{i}": (195, i) for i in range(4)}
    present |= {"nvidiactl": (195, 255), "nvidia-uvm": (509, 0), "nvidia-uvm-tools": (509, 1)}
    present["nvidia-modeset"] = (195, 254)
    nodes, hidden = plan_gpu_nodes(["GPU-2", "GPU-0"], gpus, present)
    assert [n.inside for n in nodes] == [
        "/dev/nvidia2",
        "/dev/nvidia0",
        "/dev/nvidiactl",
        "/dev/nvidia-uvm",
        "/dev/nvidia-uvm-tools",
        "/dev/nvidia-modeset",
    ]
    assert [n.rule().v1() for n in nodes][:2] == ["c 195:2 rwm", "c 195:0 rwm"]
    assert nodes[3].rule() == DeviceRule("c", 509, 0)
    assert hidden == (
        "/proc/driver/nvidia/gpus/0000:01:00.0",
        "/proc/driver/nvidia/gpus/0000:03:00.0",
    )
    assert plan_gpu_nodes([], gpus, present) == ((), ())  # no GPU: not even nvidiactl
    with pytest.raises(SandboxError, match="not on this host"):
        plan_gpu_nodes(["GPU-9"], gpus, present)
    with pytest.raises(SandboxError, match="no /dev/nvidia3"):
        plan_gpu_nodes(["GPU-3"], gpus, {"nvidia0": (195, 0)})


def test_parse_nvidia_information() -> None:
    text = (
        "Model: \t\t NVIDIA H100 80GB HBM3\nIRQ:   \t\t 35\n"
        "GPU UUID: \t GPU-3181bf17-40f0-9f37-c27d-cae48cda3f9f\nDevice Minor: \t 2\n"
        "Bus Location: \t 0000:18:00.0\n"
    )
    assert parse_nvidia_information(text, "0000:18:00.0") == NvidiaGpu(
        "GPU-3181bf17-40f0-9f37-c27d-cae48cda3f9f", 2, "0000:18:00.0"
    )
    assert parse_nvidia_information("Model: x\n", "b") is None


def test_blocked_routes_cover_the_lan_and_the_host() -> None:
    routes = blocked_routes(["127.0.0.1/8", "192.168.1.20/24", "203.0.113.7/24", "8.8.4.4/32"])
    for must in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16", "8.8.4.4/32"):
        assert must in routes
    assert "192.168.1.0/24" not in routes  # already inside 192.168.0.0/16
    assert not any(r.startswith("127.") for r in routes)  # the job's own loopback stays
    assert route_batch(["10.0.0.0/8"]) == "route add prohibit 10.0.0.0/8\n"


def test_bwrap_exit_status() -> None:
    assert bwrap_status(0) == (0, None) and bwrap_status(7) == (7, None)
    assert bwrap_status(128 + 9) == (None, 9) and bwrap_status(128 + 25) == (None, 25)
    assert bwrap_status(-9) == (None, 9)  # bwrap itself killed by the runner


def test_host_path_and_find_command(tmp_path) -> None:
    wd = tmp_path / "w"
    (wd / "tmp").mkdir(parents=True)
    run = wd / "run.sh"
    run.write_text("#!/bin/sh\n")
    run.chmod(0o755)
    s = spec(workdir=str(wd), ro_paths=(("/stage/0", "/opt/py"),))
    assert host_path("/bin/sh", s) == "/usr/bin/sh"  # through the merged-/usr link
    assert host_path("/opt/py/bin/python3", s) == "/stage/0/bin/python3"
    assert host_path("/tmp/x", s) == f"{wd}/tmp/x"
    assert host_path("/root/.rigmesh/keys", s) is None and host_path("/home", s) is None
    assert find_command("run.sh", s) is None  # no "/": a PATH search, as execvp does
    assert find_command("./run.sh", s) == str(run)
    assert find_command("/job/run.sh", s) == str(run)
    assert find_command("sh", s) is not None
    assert find_command("/nonexistent/binary", s) is None


# -- the v2 device program --------------------------------------------------------------------


def _decode(prog: bytes) -> list[tuple[int, int, int, int, int]]:
    out = []
    for i in range(0, len(prog), 8):
        code, regs, off, imm = struct.unpack("<BBhi", prog[i : i + 8])
        out.append((code, regs & 0xF, regs >> 4, off, imm))
    return out


def _run(prog: bytes, dev_type: int, access: int, major: int, minor: int) -> int:
    """A tiny interpreter for the instructions device_program emits."""
    ins = _decode(prog)
    r = [0] * 11
    ctx = [(access << 16) | dev_type, major, minor]
    pc = 0
    while True:
        code, dst, src, off, imm = ins[pc]
        pc += 1
        if code == bpfdev.LDX_MEM_W:
            r[dst] = ctx[off // 4]
        elif code == bpfdev.ALU64_AND_K:
            r[dst] &= imm & 0xFFFFFFFFFFFFFFFF
        elif code == bpfdev.ALU64_RSH_K:
            r[dst] >>= imm
        elif code == bpfdev.ALU64_MOV_K:
            r[dst] = imm
        elif code == bpfdev.ALU64_MOV_X:
            r[dst] = r[src]
        elif code == bpfdev.JMP_JNE_K:
            if r[dst] != imm:
                pc += off
        elif code == bpfdev.JMP_EXIT:
            return r[0]
        else:
            raise AssertionError(f"unexpected opcode {code:#x}")


def test_device_program_allows_exactly_the_list() -> None:
    rules = (DeviceRule("c", 1, 3), DeviceRule("c", 136, None), DeviceRule("c", 195, 0, "rw"))
    prog = bpfdev.device_program(rules)
    c, b = bpfdev.DEV_CHAR, bpfdev.DEV_BLOCK
    rw = bpfdev.ACC_READ | bpfdev.ACC_WRITE
    assert _run(prog, c, rw, 1, 3) == 1  # /dev/null
    assert _run(prog, c, rw, 136, 7) == 1  # any pts
    assert _run(prog, c, rw, 195, 0) == 1  # the rented GPU
    assert _run(prog, c, rw, 195, 1) == 0  # another GPU
    assert _run(prog, c, bpfdev.ACC_MKNOD, 195, 0) == 0  # rw only: no mknod
    assert _run(prog, b, rw, 1, 3) == 0  # block device of the same numbers
    assert _run(prog, c, rw, 8, 0) == 0


def test_device_program_in_the_kernel(fake_dev: str) -> None:
    """Load and attach the program to a v2 cgroup (this machine's unified mount is empty of
    controllers, but device programs attach there all the same) and open the fake nodes."""
    if os.geteuid() != 0:
        pytest.skip("attaching a cgroup BPF program needs root")
    with open("/proc/self/mountinfo") as f:
        mounts = [m for m in parse_mountinfo(f.read()) if m.version is CgroupVersion.V2]
    if not mounts:
        pytest.skip("no cgroup2 mount")
    with open("/proc/self/cgroup") as f:
        own = parse_proc_cgroup(f.read()).get("", "/")
    d = os.path.join(mounts[0].mount_point, own.lstrip("/"), f"rigmesh-bpftest-{os.getpid()}")
    os.mkdir(d)
    try:
        try:
            bpfdev.attach(d, (*BASE_DEVICES, DeviceRule("c", 195, 0)))
        except OSError as e:
            pytest.skip(f"cannot attach a device program here: {e}")
        code = (
            "import os\nfor n in ('nvidia0', 'nvidia1'):\n"
            f"    try:\n        os.close(os.open(os.path.join({fake_dev!r}, n), os.O_RDWR))\n"
            "    except OSError as e:\n        print(n, e.errno)\n"
        )

        def join() -> None:
            with open(os.path.join(d, "cgroup.procs"), "w") as f:
                f.write("0")

        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, preexec_fn=join
        ).stdout
        assert out.split("\n")[:2] == ["nvidia0 6", "nvidia1 1"]  # ENXIO; EPERM
    finally:
        os.rmdir(d)
