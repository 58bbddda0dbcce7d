"""The confined runner against jobs that try to get out, and against limits the kernel enforces.

Each escape test runs a real job that attempts the escape and reports what happened; the test
then checks the attempt failed the way confinement makes it fail (and, where a limit stopped the
job, that the result names that limit and its number). Where it matters, the same job under the
subprocess runner shows the attempt would have worked without confinement: a test that cannot
fail proves nothing.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import stat
import subprocess
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from exec_fixtures import FAKE_GPUS, JOB_PY, JOB_RO_PATHS, TEST_RID

from rigmesh.exec import (
    ConfinedRunner,
    Confinement,
    ConfinementUnavailable,
    Isolation,
    NetworkPolicy,
    choose_runner,
    detect_confinement,
    diskfs,
)
from rigmesh.exec.cgroups import BASE_DEVICES, CgroupLimits, DeviceRule, JobCgroup, plan_job
from rigmesh.exec.confined import NOBODY, SANDBOX_PROCS, gpu_table
from rigmesh.exec.outbuf import OutputLine
from rigmesh.exec.proctree import read_stat
from rigmesh.exec.runner import JobSpec, Limits, StopReason, SubprocessRunner, run_to_completion
from rigmesh.exec.sandbox import host_networks

FAST = Limits(wall_clock_s=20, poll_interval_s=0.02, disk_poll_interval_s=0.05)
MiB = 1 << 20


def py(code: str, limits: Limits = FAST, **kw: object) -> JobSpec:
    return JobSpec(argv=(JOB_PY, "-u", "-c", textwrap.dedent(code)), limits=limits, **kw)  # type: ignore[arg-type]


async def run_lines(runner: object, spec: JobSpec) -> tuple[object, list[str]]:
    res, events = await run_to_completion(runner, spec)  # type: ignore[arg-type]
    return res, [e.data.decode().rstrip("\n") for e in events if isinstance(e, OutputLine)]


# A helper the jobs below share: try an operation, print "<label> ok" or "<label> <ERRNO NAME>".
TRY = """
import errno, os, socket
def attempt(label, fn):
    try:
        fn()
        print(label, "ok", flush=True)
    except OSError as e:
        print(label, errno.errorcode.get(e.errno, e.errno), flush=True)
"""


def outcomes(lines: list[str]) -> dict[str, str]:
    return dict(line.split(" ", 1) for line in lines if " " in line)


@pytest.fixture(autouse=True)
def nothing_left_behind(request) -> Iterator[None]:
    """After every test here: no job cgroup and no job mount of ours remains on the host."""
    if "confinement" not in request.fixturenames:
        yield
        return
    conf: Confinement = request.getfixturevalue("confinement")
    base: str = request.getfixturevalue("confined_base")
    yield
    assert conf.cgroups is not None
    left = [
        f"{p}/{n}"
        for p in set(conf.cgroups.parents.values())
        for n in os.listdir(p)
        if n.startswith(f"rigmesh.{TEST_RID}.")
    ]
    with open("/proc/self/mountinfo") as f:
        mounts = [line.split()[4] for line in f if line.split()[4].startswith(base)]
    assert left == [] and mounts == []


# -- what the job can see and touch -----------------------------------------------------------


@pytest.fixture
def provider_secrets(confined_base: str) -> Iterator[dict[str, str]]:
    """A node key store in a world-readable place (only the mount namespace can hide it), a
    file in the provider's real home, and a file next to the jobs directory."""
    token = secrets.token_hex(8)
    home = Path.home() / f".rigmesh-escape-test-{token}"
    store = Path(confined_base) / f"node-{token}" / ".rigmesh"
    store.mkdir(parents=True)
    os.chmod(store.parent, 0o755)
    os.chmod(store, 0o755)
    paths = {
        "keystore": store / "account.json",
        "peerkey": store / "peer.key",
        "home": home,
        "sibling": Path(confined_base) / f"secret-{token}",
    }
    for p in paths.values():
        p.write_text(f"secret {token}\n")
        os.chmod(p, 0o644)
    try:
        yield {k: str(v) for k, v in paths.items()}
    finally:
        for p in paths.values():
            with contextlib.suppress(FileNotFoundError):
                p.unlink()


async def test_cannot_read_key_store_or_provider_home(
    confined_runner: ConfinedRunner, provider_secrets: dict[str, str], tmp_path
) -> None:
    code = TRY + "".join(
        f"attempt({k!r}, lambda: open({p!r}).read())\n" for k, p in provider_secrets.items()
    )
    code += "print('listing', sorted(os.listdir('/')), flush=True)\n"
    res, lines = await run_lines(confined_runner, py(code))
    assert res.ok, res
    got = outcomes(lines)
    assert {k: got[k] for k in provider_secrets} == {k: "ENOENT" for k in provider_secrets}
    listing = got["listing"]
    for hidden in ("home", "var", "run", "sys", "work", "mnt", "srv"):
        assert f"'{hidden}'" not in listing
    # The same job without confinement reads every one of them: the test can fail.
    res, lines = await run_lines(SubprocessRunner(str(tmp_path)), py(code))
    assert outcomes(lines)["keystore"] == "ok" and outcomes(lines)["home"] == "ok"


async def test_cannot_write_outside_its_working_directory(confined_runner: ConfinedRunner) -> None:
    name = f"rigmesh-escape-{secrets.token_hex(6)}"
    targets = {
        "usr": f"/usr/{name}",
        "etc": f"/etc/{name}",
        "root": f"/{name}",
        "dotdot": f"/job/../{name}",
        "dev": f"/dev/{name}",
        "proc": f"/proc/sys/kernel/{name}",
    }
    code = TRY + "".join(
        f"attempt({k!r}, lambda: open({p!r}, 'w').write('x'))\n" for k, p in targets.items()
    )
    code += """
attempt("job", lambda: open("/job/out/mine", "w").write("x"))
attempt("tmp", lambda: open("/tmp/scratch", "w").write("x"))
attempt("shm", lambda: open("/dev/shm/seg", "w").write("x"))
"""
    async with confined_runner.start(py(code)) as job:
        lines = [e.data.decode().rstrip() async for e in job.output() if isinstance(e, OutputLine)]
        res = await job.wait()
        workdir = job.workdir
        wrote_job = os.path.exists(f"{workdir}/out/mine")
        wrote_tmp = os.path.exists(f"{workdir}/tmp/scratch")  # /tmp is the working dir's tmp/
    assert res.ok, res
    got = outcomes(lines)
    assert {k: got[k] for k in targets} == {
        "usr": "EROFS",
        "etc": "EROFS",
        "root": "EROFS",
        "dotdot": "EROFS",
        "dev": "EROFS",
        "proc": "ENOENT",
    }
    assert got["job"] == got["tmp"] == got["shm"] == "ok" and wrote_job and wrote_tmp
    assert not any(os.path.exists(p) for p in (f"/usr/{name}", f"/etc/{name}", f"/{name}"))


@pytest.fixture
def listeners() -> Iterator[dict[str, tuple[socket.socket, str, int]]]:
    """TCP listeners of the 'node' on loopback and on the host's LAN address, and an abstract
    unix socket: what a job must not reach."""
    socks: dict[str, tuple[socket.socket, str, int]] = {}
    lo = socket.create_server(("127.0.0.1", 0))
    socks["loopback"] = (lo, "127.0.0.1", lo.getsockname()[1])
    lan = [n.split("/")[0] for n in host_networks() if not n.startswith("127.")]
    if lan:
        s = socket.create_server(("0.0.0.0", 0))
        socks["lan"] = (s, lan[0], s.getsockname()[1])
    u = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    u.bind(f"\0rigmesh-test-{secrets.token_hex(6)}")
    u.listen()
    socks["abstract"] = (u, u.getsockname(), 0)
    for s, _, _ in socks.values():
        s.setblocking(False)
    try:
        yield socks
    finally:
        for s, _, _ in socks.values():
            s.close()


def _connect_code(socks: dict[str, tuple[socket.socket, str, int]]) -> str:
    code = TRY + "def tcp(h, p):\n    socket.create_connection((h, p), timeout=3).close()\n"
    code += "def unix(a):\n    s = socket.socket(socket.AF_UNIX)\n    s.connect(a)\n"
    for k, (_, host, port) in socks.items():
        call = f"unix({host!r})" if k == "abstract" else f"tcp({host!r}, {port})"
        code += f"attempt({k!r}, lambda: {call})\n"
    return code


def _accepted(socks: dict[str, tuple[socket.socket, str, int]]) -> list[str]:
    got = []
    for k, (s, _, _) in socks.items():
        with contextlib.suppress(BlockingIOError):
            s.accept()[0].close()
            got.append(k)
    return got


async def test_no_network_by_default(
    confined_runner: ConfinedRunner, listeners: dict[str, tuple[socket.socket, str, int]], tmp_path
) -> None:
    res, lines = await run_lines(confined_runner, py(_connect_code(listeners)))
    assert res.ok, res
    got = outcomes(lines)
    # Its loopback is its own (nobody listens there); no route anywhere else.
    expect = {"loopback": "ECONNREFUSED", "abstract": "ECONNREFUSED"}
    if "lan" in listeners:
        expect["lan"] = "ENETUNREACH"
    assert got == expect
    assert _accepted(listeners) == []
    # Unconfined, the same job reaches every one of them.
    res, lines = await run_lines(SubprocessRunner(str(tmp_path)), py(_connect_code(listeners)))
    assert set(outcomes(lines).values()) == {"ok"}
    assert sorted(_accepted(listeners)) == sorted(listeners)


async def test_outbound_policy_keeps_lan_and_node_ports_out_of_reach(
    confinement: Confinement,
    confined_base: str,
    listeners: dict[str, tuple[socket.socket, str, int]],
) -> None:
    if confinement.slirp4netns is None:
        pytest.skip("slirp4netns not installed (make system-deps installs it)")
    runner = ConfinedRunner(
        confined_base,
        runner_id=TEST_RID,
        confinement=confinement,
        ro_paths=JOB_RO_PATHS,
        network=NetworkPolicy.OUTBOUND,
    )
    # Where the host itself reaches the internet, the job must too (the path works); a host
    # without (an offline CI box) checks only what is refused.
    public = ("1.1.1.1", 80)
    try:
        socket.create_connection(public, timeout=2).close()
        host_online = True
    except OSError:
        host_online = False
    code = _connect_code(listeners)
    port = listeners["loopback"][2]
    code += f"""
attempt("public", lambda: tcp(*{public!r}))
attempt("slirp-host", lambda: tcp("10.0.2.2", {port}))
attempt("metadata", lambda: tcp("169.254.169.254", 80))
attempt("private", lambda: tcp("192.168.1.1", 80))
routes = [l.split() for l in open("/proc/net/route").read().splitlines()[1:]]
print("default", [r[0] for r in routes if r[1] == r[7] == "00000000"], flush=True)
print("resolv", open("/etc/resolv.conf").read().split(), flush=True)
"""
    res, lines = await run_lines(runner, py(code))
    assert res.ok, res
    got = outcomes(lines)
    assert got["default"] == "['tap0']"  # there is a way out...
    if host_online:
        assert got["public"] == "ok"
    assert got["resolv"] == "['nameserver', '10.0.2.3']"
    # ...but not to the node's ports (host loopback is off in slirp), the LAN, or metadata.
    assert got["loopback"] == "ECONNREFUSED" and got["abstract"] == "ECONNREFUSED"
    assert got["slirp-host"] in ("ECONNREFUSED", "ENETUNREACH", "EACCES"), got
    assert got["metadata"] == got["private"] == "EACCES"
    if "lan" in listeners:
        assert got["lan"] == "EACCES"
    assert _accepted(listeners) == []


async def test_cannot_see_or_signal_host_processes(confined_runner: ConfinedRunner) -> None:
    # A host process of the job's own uid: without the PID namespace the job could kill it.
    def as_nobody() -> None:
        os.setgid(NOBODY)
        os.setuid(NOBODY)

    victim = subprocess.Popen(["sleep", "60"], preexec_fn=as_nobody)
    try:
        code = (
            TRY
            + f"""
import signal
print("pids", sorted(int(p) for p in os.listdir("/proc") if p.isdigit()), flush=True)
attempt("kill-victim", lambda: os.kill({victim.pid}, signal.SIGKILL))
attempt("kill-node", lambda: os.kill({os.getpid()}, signal.SIGTERM))
attempt("ptrace-node", lambda: open("/proc/{os.getpid()}/environ").read())
"""
        )
        res, lines = await run_lines(confined_runner, py(code))
        assert res.ok, res
        got = outcomes(lines)
        pids = eval(got["pids"])  # a list literal the job printed
        assert pids and max(pids) < 10  # bwrap's init, the job: nothing of the host
        assert got["kill-victim"] == got["kill-node"] == "ESRCH"
        assert got["ptrace-node"] == "ENOENT"
        assert victim.poll() is None  # still alive
    finally:
        victim.kill()
        victim.wait()


# -- limits the kernel enforces ---------------------------------------------------------------


async def test_fork_bomb_is_capped_by_pids_max(confined_runner: ConfinedRunner) -> None:
    limit = 16
    lim = Limits(wall_clock_s=20, max_processes=limit, poll_interval_s=0.02, cpus=1.0)
    code = """
    import os
    while True:
        try:
            os.fork()
        except OSError:
            pass
    """
    res, _ = await run_lines(confined_runner, py(code, limits=lim))
    assert res.reason is StopReason.PROCESSES
    assert f"pids.max {limit + SANDBOX_PROCS}" in res.detail and "refused" in res.detail
    assert 1 < res.peak_processes <= limit  # the cap held: never one more
    assert res.survivors == 0


async def test_memory_limit_is_an_oom_kill_at_the_limit(confined_runner: ConfinedRunner) -> None:
    limit = 64 * MiB
    # Polls 30 s apart: only the kernel can stop this job within the test's time.
    lim = Limits(wall_clock_s=60, memory_bytes=limit, poll_interval_s=30)
    code = """
    import time
    held = []
    for i in range(1, 33):
        held.append(b"x" * (8 << 20))     # 8 MiB of touched pages
        print("held", 8 * i, flush=True)
    print("survived", flush=True)
    time.sleep(60)
    """
    res, lines = await run_lines(confined_runner, py(code, limits=lim))
    assert res.reason is StopReason.MEMORY, res
    assert "OOM" in res.detail and "oom_kill=" in res.detail and "64.0 MiB" in res.detail
    held = [int(line.split()[1]) for line in lines if line.startswith("held")]
    assert "survived" not in lines and max(held, default=0) <= 64
    assert res.peak_rss_bytes <= limit  # the kernel's peak: never above the limit
    assert res.wall_ms < 15_000  # long before the first poll


async def test_filling_the_disk_stops_at_the_budget(confined_runner: ConfinedRunner) -> None:
    budget = 16 * MiB
    lim = Limits(wall_clock_s=30, max_disk_bytes=budget, disk_poll_interval_s=0.05)
    code = """
    import errno, time
    total = 0
    try:
        for i in range(10_000):
            with open(f"/tmp/fill{i}" if i % 2 else f"out/fill{i}", "wb") as f:
                for _ in range(4):
                    f.write(b"z" * (256 << 10))
                    f.flush()
                    total += 256 << 10
    except OSError as e:
        print("stopped", errno.errorcode[e.errno], total, flush=True)
    time.sleep(30)
    """
    res, lines = await run_lines(confined_runner, py(code, limits=lim))
    assert res.reason is StopReason.DISK, res
    assert "ENOSPC" in res.detail and "16.0 MiB" in res.detail
    (stopped,) = [line.split() for line in lines if line.startswith("stopped")]
    assert stopped[1] == "ENOSPC"
    written = int(stopped[2])
    assert 12 * MiB <= written <= budget  # all of the budget but ext4's metadata, never more
    assert res.peak_disk_bytes <= budget


async def test_cpu_quota(confined_runner: ConfinedRunner) -> None:
    lim = Limits(wall_clock_s=20, cpus=0.25)
    code = """
    import time
    t = time.monotonic()
    while time.monotonic() - t < 1.0:
        pass
    """
    res, _ = await run_lines(confined_runner, py(code, limits=lim))
    assert res.ok and res.cpu_ms is not None
    # A spinning job with a quarter core: about 250 ms of CPU in 1 s (less on a busy host).
    assert res.cpu_ms <= 0.25 * res.wall_ms * 1.3 + 50, (res.cpu_ms, res.wall_ms)


# -- GPUs: only the rented device nodes, by mount and by the devices controller ------------------


async def test_job_sees_only_its_rented_gpu(confined_runner: ConfinedRunner) -> None:
    code = (
        TRY
        + """
for name in ("nvidia0", "nvidia1", "nvidiactl"):
    attempt(name, lambda: os.close(os.open("/dev/" + name, os.O_RDWR)))
print("nodes", sorted(n for n in os.listdir("/dev") if n.startswith("nvidia")), flush=True)
print("cvd", os.environ["CUDA_VISIBLE_DEVICES"], flush=True)
"""
    )
    res, lines = await run_lines(confined_runner, py(code, gpus=("GPU-aaaa",)))
    assert res.ok, res
    got = outcomes(lines)
    # ENXIO: the open reached the kernel (allowed by mount and cgroup) and found no driver,
    # as fake nodes do. ENOENT: the other GPU's node is not there at all.
    assert (got["nvidia0"], got["nvidia1"], got["nvidiactl"]) == ("ENXIO", "ENOENT", "ENXIO")
    assert got["nodes"] == "['nvidia0', 'nvidiactl']"
    assert got["cvd"] == "GPU-aaaa"
    res, lines = await run_lines(confined_runner, py(code))  # no GPU rented: no node at all
    got = outcomes(lines)
    assert got["nodes"] == "[]" and got["nvidiactl"] == "ENOENT"


async def test_rented_gpu_must_exist(confined_runner: ConfinedRunner) -> None:
    from rigmesh.exec.runner import JobStartError

    with pytest.raises(JobStartError, match="not on this host"):
        async with confined_runner.start(py("1", gpus=("GPU-zzzz",))):
            pass


async def test_devices_controller_refuses_a_gpu_not_rented(
    confinement: Confinement, fake_dev: str
) -> None:
    # Even a node that reached the job's filesystem (it must not) stays closed: the devices
    # cgroup allows only the rented minor. Checked without the sandbox, as root, so nothing
    # but the cgroup stands in the way.
    assert confinement.cgroups is not None
    rented = DeviceRule("c", 195, FAKE_GPUS["GPU-aaaa"])
    plan = plan_job(
        confinement.cgroups,
        f"rigmesh.devtest.{secrets.token_hex(4)}",
        CgroupLimits(devices=(*BASE_DEVICES, rented)),
    )
    code = TRY + "".join(
        f"attempt({n!r}, lambda: os.close(os.open({fake_dev + '/' + n!r}, os.O_RDWR)))\n"
        for n in ("nvidia0", "nvidia1")
    )

    def run(procs: tuple[str, ...]) -> dict[str, str]:
        def join() -> None:
            for f in procs:
                with open(f, "w") as fh:
                    fh.write("0")

        out = subprocess.run([JOB_PY, "-c", code], capture_output=True, preexec_fn=join)
        return outcomes(out.stdout.decode().splitlines())

    cg = JobCgroup(plan)
    cg.create()
    try:
        inside = run(plan.procs_files)
    finally:
        cg.kill_all()
        cg.remove()
    assert inside == {"nvidia0": "ENXIO", "nvidia1": "EPERM"}
    assert run(()) == {"nvidia0": "ENXIO", "nvidia1": "ENXIO"}  # outside: only the driver


# -- what the node gets to decide ------------------------------------------------------------


def test_this_host_confines(confinement: Confinement) -> None:
    assert confinement.isolation is Isolation.NAMESPACES_CGROUP
    assert confinement.disk_hard and confinement.job_uid == NOBODY
    assert {i.value for i in Isolation} == {"none", "namespaces", "namespaces+cgroup"}


def test_choose_runner(confinement: Confinement, confined_base: str) -> None:
    r = choose_runner(allow_unconfined=False, base_dir=confined_base, confinement=confinement)
    assert isinstance(r, ConfinedRunner) and r.isolation is Isolation.NAMESPACES_CGROUP
    none = Confinement(Isolation.NONE, reasons=("bubblewrap is not installed",))
    with pytest.raises(ConfinementUnavailable) as ei:
        choose_runner(allow_unconfined=False, confinement=none)
    assert ei.value.reasons == ("bubblewrap is not installed",)
    assert ei.value.setting == "allow_unconfined" and "allow_unconfined=True" in str(ei.value)
    r = choose_runner(allow_unconfined=True, base_dir=confined_base, confinement=none)
    assert isinstance(r, SubprocessRunner) and r.isolation is Isolation.NONE
    # A host with namespaces but no cgroups does not meet a provider's stricter minimum.
    ns_only = Confinement(Isolation.NAMESPACES, bwrap=confinement.bwrap, reasons=("no cgroup",))
    with pytest.raises(ConfinementUnavailable, match="namespaces\\+cgroup required"):
        choose_runner(
            allow_unconfined=False, confinement=ns_only, minimum=Isolation.NAMESPACES_CGROUP
        )


def test_detect_without_bubblewrap_says_why(tmp_path) -> None:
    conf = detect_confinement(bwrap=str(tmp_path / "no-such-bwrap"))
    assert conf.isolation is Isolation.NONE and "bubblewrap" in conf.reasons[0]


async def test_namespaces_without_cgroups_polls_limits(
    confinement: Confinement, confined_base: str
) -> None:
    runner = ConfinedRunner(
        confined_base,
        runner_id=TEST_RID,
        confinement=confinement,
        ro_paths=JOB_RO_PATHS,
        use_cgroups=False,
        hard_disk=False,
    )
    assert runner.isolation is Isolation.NAMESPACES
    lim = Limits(wall_clock_s=20, memory_bytes=64 * MiB, poll_interval_s=0.02)
    code = """
    import time
    held = [b"x" * (8 << 20) for _ in range(24)]
    time.sleep(30)
    """
    res, _ = await run_lines(runner, py(code, limits=lim))
    assert res.reason is StopReason.MEMORY and "polled" in res.detail
    assert res.survivors == 0


async def test_reap_stale_kills_a_crashed_nodes_jobs(
    confinement: Confinement, confined_base: str
) -> None:
    assert confinement.cgroups is not None
    rid = f"crash{os.getpid()}"
    plan = plan_job(confinement.cgroups, f"rigmesh.{rid}.dead", CgroupLimits(pids_max=10))
    cg = JobCgroup(plan)
    cg.create()

    def join() -> None:
        for f in plan.procs_files:
            with open(f, "w") as fh:
                fh.write("0")

    orphan = subprocess.Popen(["sleep", "60"], preexec_fn=join)
    runner = ConfinedRunner(confined_base, confinement=confinement, runner_id=rid)
    # Its mounted working directory and image, and a live job of another node beside it.
    dead = os.path.join(runner.jobs_dir, f"rigmesh.{rid}.dead")
    os.mkdir(dead)
    disk = diskfs.JobDisk.create(f"{runner.jobs_dir}/.rigmesh.{rid}.dead.img", dead, 8 * MiB,
                                 NOBODY, NOBODY, runner.jobs_dir)  # fmt: skip
    other = os.path.join(runner.jobs_dir, f"rigmesh.x{rid}.alive")
    os.mkdir(other)
    try:
        assert runner.reap_stale() == 1
        assert orphan.wait(timeout=5) == -signal.SIGKILL
        assert not any(os.path.exists(d) for d in plan.dirs.values())
        assert not os.path.exists(dead) and not os.path.exists(disk.image)
        assert os.path.isdir(other)  # not this runner's: left alone
    finally:
        disk.close()
        os.rmdir(other)


async def test_stop_reaches_processes_that_left_the_tree(confined_runner: ConfinedRunner) -> None:
    # Daemons that double-fork, setsid and clear their environment: the cgroup still holds them.
    code = """
    import os, time
    for _ in range(3):
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                os.environ.clear()
                ns = os.readlink("/proc/self/ns/pid")
                os.write(1, f"daemon {ns}\\n".encode())  # one write: lines never mix
                time.sleep(300)
            os._exit(0)
    time.sleep(300)
    """
    async with confined_runner.start(py(code)) as job:
        ns: list[bytes] = []
        async for ev in job.output():
            if isinstance(ev, OutputLine) and ev.data.startswith(b"daemon"):
                ns.append(ev.data.split()[1])
                if len(ns) == 3:
                    break
        with trio.fail_after(5):
            while job.live_processes() < 4:
                await trio.sleep(0.02)
        await job.stop()
        res = await job.wait()
    assert res.reason is StopReason.STOPPED and res.survivors == 0
    assert res.killed_processes >= 4 + SANDBOX_PROCS
    (pidns,) = set(ns)
    for name in os.listdir("/proc"):
        if name.isdigit():
            with contextlib.suppress(OSError):
                same = os.readlink(f"/proc/{name}/ns/pid").encode() == pidns
                st = read_stat(int(name))
                assert not (same and st is not None and st.alive)


def test_fake_device_nodes_are_char_devices_of_the_nvidia_major(fake_dev: str) -> None:
    st = os.stat(os.path.join(fake_dev, "nvidia1"))
    assert stat.S_ISCHR(st.st_mode) and os.major(st.st_rdev) == 195
    assert [g.minor for g in gpu_table(FAKE_GPUS)] == [0, 1]
