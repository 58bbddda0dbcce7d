"""The confined runner: strangers' jobs in namespaces (bubblewrap) under kernel-enforced limits.

`ConfinedRunner` implements the same `Runner` / `Job` Protocols as `SubprocessRunner` and shares
its supervision loop; what it adds is where the job runs (`sandbox.py`: what it can see and
reach) and how it is bounded and killed (`cgroups.py`: memory, processes, CPU, devices, freeze
and kill; `diskfs.py`: a filesystem of exactly the disk budget).

For the node and the lead's wiring: `detect_confinement()` says what this host can give and why
not more; `choose_runner(allow_unconfined=...)` returns the confined runner where the host allows
it and refuses (`ConfinementUnavailable`) where it does not, unless the provider explicitly
allowed unconfined jobs; `runner.isolation` is the `Isolation` value an offer advertises.

One job, start to end:
1. A working directory under the runner's jobs directory; where the node is root, an ext4 image
   of the disk budget mounted on it; inputs written; everything owned by the job's uid.
2. A cgroup per hierarchy (v1) or one (v2) below the node's own, limits written.
3. bwrap spawned; between fork and exec the child joins the cgroups, takes the rlimits and, where
   the node is root, drops to the job's uid (65534 by default), so bwrap and everything under it
   are in the cgroup and never hold host privileges.
4. Supervision (shared loop): output, wall clock, the kernel's OOM notification, fork refusals,
   a full filesystem; on any stop, the cgroup is frozen and every member SIGKILLed.
5. Cleanup: cgroup removed, filesystem unmounted, working directory deleted.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import resource
import shutil
import signal
import stat
import subprocess
import tempfile
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field

import trio

from rigmesh.exec import bpfdev, diskfs, proctree, sandbox
from rigmesh.exec.cgroups import (
    BASE_DEVICES,
    CgroupError,
    CgroupLayout,
    CgroupLimits,
    CgroupVersion,
    Counters,
    JobCgroup,
    plan_job,
    prepare_v2,
    read_layout,
    stale_job_dirs,
)
from rigmesh.exec.runner import (
    Final,
    Isolation,
    JobSpec,
    JobStartError,
    LimitHit,
    Limits,
    Runner,
    Sample,
    StopReason,
    SubprocessRunner,
    SupervisedJob,
    TreeContainment,
    job_env,
    new_token,
    polled_disk,
    prepare_workdir,
    rlimits,
    validate_runner_id,
)
from rigmesh.exec.sandbox import NetworkPolicy, SandboxError

NOBODY = 65534
SANDBOX_PROCS = 2  # bwrap outside the PID namespace, and its init inside
_RANK = {Isolation.NONE: 0, Isolation.NAMESPACES: 1, Isolation.NAMESPACES_CGROUP: 2}


class ConfinementUnavailable(RuntimeError):
    """This host cannot confine strangers' jobs; `reasons` say why, `setting` how to override."""

    def __init__(self, reasons: Sequence[str], setting: str = "allow_unconfined") -> None:
        self.reasons = tuple(reasons)
        self.setting = setting
        super().__init__(
            "this host cannot confine renters' jobs: "
            + "; ".join(self.reasons)
            + f". Fix that, or run them unconfined as the node's own user with {setting}=True"
            " (only for renters you trust)."
        )


@dataclass(frozen=True)
class Confinement:
    """What this host can give a job, found by `detect_confinement()`."""

    isolation: Isolation
    bwrap: str | None = None
    cgroups: CgroupLayout | None = None
    disk_hard: bool = False  # per-job ext4 image (ENOSPC at the budget) rather than polling
    slirp4netns: str | None = None  # NetworkPolicy.OUTBOUND possible
    job_uid: int = NOBODY
    job_gid: int = NOBODY
    disable_userns: bool = True
    reasons: tuple[str, ...] = field(default=())  # what is missing, and what that costs

    def describe(self) -> str:
        lines = [f"job isolation: {self.isolation.value}"]
        if self.isolation is not Isolation.NONE:
            lines.append(
                f"  sandbox {self.bwrap}, job uid {self.job_uid}; cgroups "
                f"{self.cgroups.version.value if self.cgroups else 'none (limits polled)'}; disk "
                f"{'hard (per-job ext4 image)' if self.disk_hard else 'polled'}; outbound "
                f"network {'available' if self.slirp4netns else 'unavailable'}"
            )
        lines += [f"  - {r}" for r in self.reasons]
        return "\n".join(lines)


def _probe_bwrap(bwrap: str, uid: int, gid: int, disable_userns: bool) -> str | None:
    """Run an empty sandbox the way jobs run; None if it worked, else bwrap's complaint."""
    spec = sandbox.SandboxSpec(
        argv=("true",),
        workdir="/",  # any directory the job uid can reach: bound read-only
        workdir_writable=False,
        system=sandbox.host_system(),
        disable_userns=disable_userns,
    )
    try:
        r = subprocess.run(
            sandbox.plan_bwrap(bwrap, spec),
            capture_output=True,
            timeout=20,
            env={"PATH": sandbox.SANDBOX_PATH},
            preexec_fn=_demote_fn(uid, gid),
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return str(e)
    return None if r.returncode == 0 else r.stderr.decode(errors="replace").strip()


def _demote_fn(uid: int, gid: int) -> Callable[[], None] | None:
    if os.geteuid() != 0 or uid == 0:
        return None
    setgroups, setresgid, setresuid = os.setgroups, os.setresgid, os.setresuid

    def demote() -> None:
        setgroups([])
        setresgid(gid, gid, gid)
        setresuid(uid, uid, uid)

    return demote


def _probe_cgroups() -> tuple[CgroupLayout | None, list[str]]:
    layout, why = read_layout()
    if layout is None:
        return None, why
    if layout.version is CgroupVersion.V2:
        try:
            prepare_v2(layout)
        except (OSError, CgroupError) as e:
            return None, [*why, f"cgroup v2: {e}"]
    probe = f"rigmesh-probe-{os.getpid()}"
    plan = plan_job(layout, probe, CgroupLimits(memory_bytes=1 << 30, pids_max=64))
    cg = JobCgroup(plan)
    try:
        cg.create()
    except CgroupError as e:
        return None, [*why, f"cgroup {layout.version.value}: {e}"]
    finally:
        cg.remove()
    return layout, why


def detect_confinement(
    *, bwrap: str | None = None, job_uid: int | None = None, job_gid: int | None = None
) -> Confinement:
    """What this host can give a stranger's job, and why not more. Runs an empty sandbox and
    makes (and removes) one probe cgroup: call once at start-up, not per job."""
    root = os.geteuid() == 0
    uid = (NOBODY if root else os.geteuid()) if job_uid is None else job_uid
    gid = (NOBODY if root else os.getegid()) if job_gid is None else job_gid
    reasons: list[str] = []
    bw = bwrap or shutil.which("bwrap")
    if bw is None:
        return Confinement(
            Isolation.NONE,
            reasons=("bubblewrap is not installed (Debian: apt-get install bubblewrap)",),
        )
    disable_userns = True
    err = _probe_bwrap(bw, uid, gid, disable_userns)
    if err is not None and "disable-userns" in err:  # bubblewrap before 0.8
        disable_userns = False
        reasons.append("bubblewrap < 0.8: jobs may create user namespaces inside the sandbox")
        err = _probe_bwrap(bw, uid, gid, disable_userns)
    if err is not None:
        return Confinement(
            Isolation.NONE,
            bwrap=bw,
            reasons=(
                f"bubblewrap cannot make a sandbox here ({err}); user namespaces may be off "
                "(sysctl kernel.unprivileged_userns_clone, user.max_user_namespaces, or an "
                "AppArmor userns restriction)",
            ),
        )
    layout, why = _probe_cgroups()
    if layout is None:
        reasons += why
        reasons.append("no writable cgroup: memory and process limits are polled, not hard")
    disk_why = diskfs.available()
    if disk_why is not None:
        reasons.append(disk_why)
    slirp = shutil.which("slirp4netns")
    if slirp is None:
        reasons.append("slirp4netns not installed: only network policy 'none' is available")
    return Confinement(
        Isolation.NAMESPACES_CGROUP if layout is not None else Isolation.NAMESPACES,
        bwrap=bw,
        cgroups=layout,
        disk_hard=disk_why is None,
        slirp4netns=slirp,
        job_uid=uid,
        job_gid=gid,
        disable_userns=disable_userns,
        reasons=tuple(reasons),
    )


def choose_runner(
    *,
    allow_unconfined: bool,
    base_dir: str | None = None,
    runner_id: str = "",
    minimum: Isolation = Isolation.NAMESPACES,
    confinement: Confinement | None = None,
    **confined_options: object,
) -> Runner:
    """The runner for renters' jobs on this host.

    The confined runner where the host gives at least `minimum`; else `ConfinementUnavailable`
    saying why, unless `allow_unconfined` (the provider's explicit setting), then the
    subprocess runner (`isolation == Isolation.NONE`, which its offers must then say).
    `confined_options` go to `ConfinedRunner` (network, ro_paths, dev_dir, ...)."""
    conf = confinement if confinement is not None else detect_confinement()
    if _RANK[conf.isolation] >= _RANK[minimum] and conf.isolation is not Isolation.NONE:
        return ConfinedRunner(
            base_dir,
            runner_id=runner_id,
            confinement=conf,
            **confined_options,  # type: ignore[arg-type]
        )
    if allow_unconfined:
        return SubprocessRunner(base_dir, runner_id=runner_id)
    reasons = list(conf.reasons)
    if conf.isolation is not Isolation.NONE:
        reasons.insert(0, f"host gives {conf.isolation.value}, {minimum.value} required")
    raise ConfinementUnavailable(reasons)


# -- containment by cgroup --------------------------------------------------------------------


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


class CgroupContainment:
    """The job is its cgroup: the kernel enforces the limits, the runner reads its counters."""

    def __init__(
        self,
        cg: JobCgroup,
        limits: Limits,
        workdir: str,
        disk: diskfs.JobDisk | None,
        pids_max: int | None,
    ) -> None:
        self.cg = cg
        self.limits = limits
        self.workdir = workdir
        self.disk_fs = disk
        self.pids_max = pids_max
        self._efd = cg.oom_eventfd()

    def _jobs(self, tasks: int) -> int:
        return max(0, tasks - SANDBOX_PROCS)

    def _oom(self, c: Counters) -> LimitHit:
        where = "memory.oom_control" if self.cg.v1 else "memory.events"
        return LimitHit(
            StopReason.MEMORY,
            f"the kernel OOM-killed {c.oom_kills} process(es) at the cgroup memory limit "
            f"{_mib(self.limits.memory_bytes or 0)} ({where} oom_kill={c.oom_kills})",
        )

    def _pids(self, c: Counters) -> LimitHit:
        return LimitHit(
            StopReason.PROCESSES,
            f"the kernel refused {c.forks_refused} fork(s) at pids.max {self.pids_max} "
            f"(the job's {self.limits.max_processes} tasks + {SANDBOX_PROCS} of the sandbox)",
        )

    def sample(self) -> Sample:
        c = self.cg.counters()
        hit = None
        if c.oom_kills:
            hit = self._oom(c)  # v2 (no event registration) or an event we have not seen yet
        elif c.forks_refused:
            hit = self._pids(c)  # the cap held; a job that hits it is stopped, as polled
        return Sample(self._jobs(c.processes), c.memory_bytes, hit)

    def disk(self) -> tuple[int, LimitHit | None]:
        if self.disk_fs is None:
            return polled_disk(self.workdir, self.limits)
        used, _, full = self.disk_fs.usage()
        if full:
            return used, LimitHit(
                StopReason.DISK,
                f"the job's filesystem ({_mib(self.disk_fs.size)} ext4 image) is full: the "
                "kernel refused further writes (ENOSPC)",
            )
        return used, None

    async def kernel_event(self) -> LimitHit:
        if self._efd is None:
            await trio.sleep_forever()
        assert self._efd is not None
        while True:
            await trio.lowlevel.wait_readable(self._efd)
            with contextlib.suppress(BlockingIOError):
                os.read(self._efd, 8)
            c = await trio.to_thread.run_sync(self.cg.counters)
            if c.oom_kills:
                return self._oom(c)

    def kill(self) -> tuple[int, int]:
        return self.cg.kill_all()

    def finish(self) -> Final:
        if self._efd is not None:
            os.close(self._efd)
            self._efd = None
        c = self.cg.counters()
        hit = self._oom(c) if c.oom_kills else self._pids(c) if c.forks_refused else None
        if hit is None and self.disk_fs is not None:
            _, hit = self.disk()
        return Final(
            hit=hit,
            peak_memory_bytes=c.memory_peak_bytes,
            peak_processes=self._jobs(c.pids_peak),
            cpu_ms=c.cpu_ns // 1_000_000,
        )


# -- the runner -------------------------------------------------------------------------------


def _searchable_by(path: str, uid: int, gid: int) -> str | None:
    """None if `uid` can reach `path` through every directory above it, else the blocker."""
    p = os.path.realpath(path)
    while True:
        st = os.stat(p)
        ok = (
            st.st_mode & stat.S_IXOTH
            or (st.st_uid == uid and st.st_mode & stat.S_IXUSR)
            or (st.st_gid == gid and st.st_mode & stat.S_IXGRP)
        )
        if not ok:
            return p
        if p == "/":
            return None
        p = os.path.dirname(p)


def _chown_tree(top: str, uid: int, gid: int) -> None:
    for dirpath, dirnames, filenames in os.walk(top):
        os.chown(dirpath, uid, gid, follow_symlinks=False)
        for n in (*dirnames, *filenames):
            os.chown(os.path.join(dirpath, n), uid, gid, follow_symlinks=False)


def _make_preexec(
    limits: Limits, procs_files: Sequence[str], uid: int, gid: int
) -> Callable[[], None]:
    rl = rlimits(limits)
    demote = _demote_fn(uid, gid)
    setrlimit, os_open, os_write, os_close = resource.setrlimit, os.open, os.write, os.close
    wronly = os.O_WRONLY

    # Between fork and exec: join the cgroups first (as root, before dropping privileges), so
    # bwrap and everything it starts are in them from their first instruction.
    def preexec() -> None:
        for f in procs_files:
            fd = os_open(f, wronly)
            try:
                os_write(fd, b"0")
            finally:
                os_close(fd)
        for res, val in rl:
            setrlimit(res, (val, val))
        if demote is not None:
            demote()

    return preexec


@dataclass
class _Outbound:
    """The user-mode NAT of one outbound job; closing exit_w makes slirp4netns exit."""

    proc: trio.Process
    exit_w: int


class ConfinedRunner:
    """Runs each job in a bubblewrap sandbox under cgroup limits. See README.md in this package."""

    def __init__(
        self,
        base_dir: str | None = None,
        *,
        runner_id: str = "",
        keep_workdirs: bool = False,
        confinement: Confinement | None = None,
        network: NetworkPolicy = NetworkPolicy.NONE,
        ro_paths: Sequence[str] = (),
        dev_dir: str = "/dev",
        gpus: Sequence[sandbox.NvidiaGpu] | None = None,
        use_cgroups: bool = True,
        hard_disk: bool = True,
    ) -> None:
        """`ro_paths`: host paths the job may read beyond /usr and /etc (an interpreter
        installed elsewhere). `dev_dir` and `gpus` (uuid, minor, PCI bus id per GPU) are read
        from /dev and /proc/driver/nvidia when not given; tests pass fake ones.
        `use_cgroups=False` / `hard_disk=False` fall back to polling (for comparison)."""
        conf = confinement if confinement is not None else detect_confinement()
        if conf.isolation is Isolation.NONE or conf.bwrap is None:
            raise ConfinementUnavailable(conf.reasons)
        if network is NetworkPolicy.OUTBOUND and (conf.slirp4netns is None or os.geteuid()):
            raise ConfinementUnavailable(
                ["outbound network needs slirp4netns and a node running as root"], "network"
            )
        self.conf = conf
        self.runner_id = validate_runner_id(runner_id)
        self.keep_workdirs = keep_workdirs
        self.network = network
        self.ro_paths = tuple(os.path.realpath(p) for p in ro_paths)
        # Paths the job's uid cannot reach through their parents (an interpreter under /root)
        # are staged per job: a read-only bind on a directory it can reach (root only).
        self._staged = frozenset(
            p
            for p in self.ro_paths
            if os.geteuid() == 0 and _searchable_by(p, conf.job_uid, conf.job_gid) is not None
        )
        self.dev_dir = dev_dir
        self._gpus = list(gpus) if gpus is not None else None
        self.layout = conf.cgroups if use_cgroups else None
        self.hard_disk = hard_disk and conf.disk_hard
        self.isolation = (
            Isolation.NAMESPACES_CGROUP if self.layout is not None else Isolation.NAMESPACES
        )
        self.jobs_dir = os.path.join(base_dir or tempfile.gettempdir(), "rigmesh-jobs")
        os.makedirs(self.jobs_dir, mode=0o711, exist_ok=True)
        if os.geteuid() == 0:
            os.chmod(self.jobs_dir, 0o711)  # others may pass through to their own dir only
        blocker = _searchable_by(self.jobs_dir, conf.job_uid, conf.job_gid)
        if blocker is not None:
            raise ConfinementUnavailable(
                [
                    f"{blocker} is not searchable by the job's uid {conf.job_uid}: bubblewrap "
                    "could not bind the working directory; choose a base_dir below it"
                ],
                "base_dir",
            )
        self._system = sandbox.host_system()

    def gpus(self) -> list[sandbox.NvidiaGpu]:
        if self._gpus is None:
            self._gpus = sandbox.read_nvidia_gpus()
        return self._gpus

    def reap_stale(self) -> int:
        """Kill and remove what an earlier run of this node left (it crashed): job cgroups, then
        job filesystems, staged binds, images and working directories. Only this runner_id's:
        nodes sharing a host leave each other alone. Returns how many cgroups were reaped. Call
        once at start-up, before the first job."""
        prefix = f"rigmesh.{self.runner_id}."
        n = 0
        if self.layout is not None:
            names = {os.path.basename(d) for d in stale_job_dirs(self.layout, prefix)}
            for name in names:
                cg = JobCgroup.existing(self.layout, name)
                cg.kill_all()
                cg.remove()
                n += 1
        ours = [
            os.path.join(self.jobs_dir, e)
            for e in os.listdir(self.jobs_dir)
            if e.startswith((prefix, f".{prefix}"))
        ]
        if os.geteuid() == 0:
            diskfs.unmount_under(ours)
        for p in ours:
            if os.path.isdir(p) and not os.path.islink(p):
                shutil.rmtree(p, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(p)
        return n

    @contextlib.asynccontextmanager
    async def start(self, spec: JobSpec) -> AsyncIterator[SupervisedJob]:
        conf, lim = self.conf, spec.limits
        uid, gid = conf.job_uid, conf.job_gid
        token = new_token(self.runner_id)
        name = f"rigmesh.{token}"  # the cgroup's name too; the runner_id in it scopes reaping
        workdir = os.path.join(self.jobs_dir, name)
        os.mkdir(workdir, 0o700)
        image = os.path.join(self.jobs_dir, f".{name}.img")
        stage = os.path.join(self.jobs_dir, f".{name}.ro")
        staged: list[str] = []
        disk: diskfs.JobDisk | None = None
        cg: JobCgroup | None = None
        outbound: _Outbound | None = None
        pids_max = None if lim.max_processes is None else lim.max_processes + SANDBOX_PROCS
        try:
            try:
                devices, hidden = sandbox.plan_gpu_nodes(
                    spec.gpus,
                    self.gpus() if spec.gpus else [],
                    sandbox.scan_nvidia_nodes(self.dev_dir) if spec.gpus else {},
                    self.dev_dir,
                )
            except SandboxError as e:
                raise JobStartError(str(e)) from e
            hidden = tuple(h for h in hidden if os.path.isdir(h))  # only what the driver shows
            order = sorted(self._staged)
            sb = sandbox.SandboxSpec(
                argv=spec.argv,
                workdir=workdir,
                system=self._system,
                ro_paths=tuple(
                    (f"{stage}/{order.index(p)}" if p in self._staged else p, p)
                    for p in self.ro_paths
                ),
                devices=devices,
                hidden=hidden,
                bind_sys=bool(spec.gpus),
                network=self.network,
                disable_userns=conf.disable_userns,
            )

            def prepare() -> None:
                # One thread hop for all start-up work (each hop is a scheduler wake-up). What
                # it makes goes into the outer variables at once: the finally below undoes it.
                nonlocal disk, cg
                if self.hard_disk and lim.max_disk_bytes is not None:
                    disk = diskfs.JobDisk.create(
                        image, workdir, lim.max_disk_bytes, uid, gid, self.jobs_dir
                    )
                prepare_workdir(workdir, spec)
                if os.geteuid() == 0:
                    _chown_tree(workdir, uid, gid)
                if self._staged:
                    os.mkdir(stage, 0o711)
                for i, p in enumerate(order):
                    os.mkdir(f"{stage}/{i}", 0o755)
                    staged.append(f"{stage}/{i}")
                    diskfs.bind_readonly(p, f"{stage}/{i}")
                # execvp's failure inside would only show as bwrap's exit 1: say it here.
                if sandbox.find_command(spec.argv[0], sb) is None:
                    raise JobStartError(
                        f"cannot start {spec.argv[0]!r}: no such executable inside the sandbox"
                    )
                if self.layout is not None:
                    rules = (*BASE_DEVICES, *(n.rule() for n in devices))
                    limits = CgroupLimits(lim.memory_bytes, pids_max, lim.cpus, rules)
                    plan = plan_job(self.layout, name, limits)
                    c = JobCgroup(plan)
                    c.create()  # removes what it made if it fails
                    cg = c
                    if plan.version is CgroupVersion.V2 and plan.devices is not None:
                        bpfdev.attach(plan.dirs[""], plan.devices)  # v2's devices "controller"

            try:
                await trio.to_thread.run_sync(prepare)
            except (OSError, CgroupError, diskfs.DiskSetupError) as e:
                raise JobStartError(f"cannot set up the job's confinement: {e}") from e

            env = job_env(
                spec, home=sandbox.JOB_DIR, tmpdir="/tmp", path=sandbox.SANDBOX_PATH, token=token
            )
            fds: list[int] = []  # ends the child gets; closed here once it has them
            info_r = block_w = -1
            if self.network is NetworkPolicy.OUTBOUND:
                info_r, info_w = os.pipe()
                block_r, block_w = os.pipe()
                resolv_r, resolv_w = os.pipe()
                os.write(resolv_w, f"nameserver {sandbox.SLIRP_DNS}\n".encode())
                os.close(resolv_w)
                fds = [info_w, block_r, resolv_r]
                sb = dataclasses.replace(
                    sb, resolv_conf_fd=resolv_r, info_fd=info_w, block_fd=block_r
                )
            job = SupervisedJob(spec, workdir, token, decode_status=sandbox.bwrap_status)
            procs_files = cg.plan.procs_files if cg is not None else ()
            try:
                proc = await trio.lowlevel.open_process(
                    sandbox.plan_bwrap(conf.bwrap or "bwrap", sb),
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT if spec.merge_stderr else subprocess.PIPE,
                    cwd="/",
                    env=env,
                    start_new_session=True,
                    preexec_fn=_make_preexec(lim, procs_files, uid, gid),
                    close_fds=True,
                    pass_fds=fds,
                )
            except (OSError, subprocess.SubprocessError) as e:
                raise JobStartError(f"cannot start the sandbox: {e}") from e
            finally:
                for fd in fds:
                    os.close(fd)
            if cg is not None:
                containment: CgroupContainment | TreeContainment = CgroupContainment(
                    cg, lim, workdir, disk, pids_max
                )
            else:
                # No cgroup: the PID namespace still holds every process of the job below bwrap,
                # so the tree walk from bwrap finds them all, and the token net is not needed.
                tracker = proctree.TreeTracker(proc.pid)
                containment = TreeContainment(tracker, lim, workdir)
            async with job.supervised(proc, containment):
                if self.network is NetworkPolicy.OUTBOUND:
                    try:
                        outbound = await self._connect_outbound(info_r, block_w)
                    except (OSError, ValueError, subprocess.SubprocessError) as e:
                        raise JobStartError(f"cannot set up outbound network: {e}") from e
                    finally:
                        os.close(info_r)
                        with contextlib.suppress(OSError):
                            os.close(block_w)
                yield job
        finally:
            with trio.CancelScope(shield=True):
                if outbound is not None:
                    await self._disconnect(outbound)

                def cleanup() -> None:
                    for m in staged:
                        diskfs.unmount(m)  # fails harmlessly where the bind never happened
                        with contextlib.suppress(OSError):
                            os.rmdir(m)
                    with contextlib.suppress(OSError):
                        os.rmdir(stage)
                    if cg is not None:
                        cg.remove()
                    if disk is not None:
                        disk.close()
                    if not self.keep_workdirs:
                        shutil.rmtree(workdir, ignore_errors=True)
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(image)

                await trio.to_thread.run_sync(cleanup)

    async def _connect_outbound(self, info_r: int, block_w: int) -> _Outbound:
        """Give the waiting sandbox a NATed uplink with the LAN and the host refused, then let
        the job start (bwrap blocks on block_w until then)."""
        info = b""
        with trio.fail_after(10):
            while True:
                await trio.lowlevel.wait_readable(info_r)
                chunk = os.read(info_r, 4096)
                if not chunk:
                    raise ValueError("bwrap exited before reporting its pid")
                info += chunk
                with contextlib.suppress(ValueError):
                    pid = int(json.loads(info)["child-pid"])
                    break
        ready_r, ready_w = os.pipe()
        exit_r, exit_w = os.pipe()
        try:
            proc = await trio.lowlevel.open_process(
                [
                    self.conf.slirp4netns or "slirp4netns",
                    "--configure",
                    "--mtu=65520",
                    "--disable-host-loopback",
                    f"--ready-fd={ready_w}",
                    f"--exit-fd={exit_r}",
                    # The network namespace by path, without joining the job's user namespace:
                    # bwrap reports the pid before it has finished switching user namespaces
                    # (--disable-userns nests one), and root needs none to enter the netns.
                    "--netns-type=path",
                    f"/proc/{pid}/ns/net",
                    "tap0",
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                pass_fds=(ready_w, exit_r),
            )
        finally:
            os.close(ready_w)
            os.close(exit_r)
        out = _Outbound(proc, exit_w)
        try:
            with trio.fail_after(10):
                await trio.lowlevel.wait_readable(ready_r)
            if not os.read(ready_r, 1):
                raise ValueError("slirp4netns exited before it was ready")
        except BaseException:
            await self._disconnect(out)
            raise
        finally:
            os.close(ready_r)
        routes = sandbox.blocked_routes(await trio.to_thread.run_sync(sandbox.host_networks))
        r = await trio.run_process(
            ["nsenter", f"--net=/proc/{pid}/ns/net", "ip", "-batch", "-"],
            stdin=sandbox.route_batch(routes).encode(),
            capture_stderr=True,
            check=False,
        )
        if r.returncode != 0:
            await self._disconnect(out)
            raise ValueError(f"routes: {r.stderr.decode(errors='replace')}")
        os.write(block_w, b"1")
        return out

    @staticmethod
    async def _disconnect(out: _Outbound) -> None:
        with contextlib.suppress(OSError):
            os.close(out.exit_w)
        with trio.move_on_after(2):
            await out.proc.wait()
            return
        out.proc.send_signal(signal.SIGKILL)
        await out.proc.wait()


def interpreter_paths(python: str) -> tuple[str, ...]:
    """Read-only paths a job running `python` needs beyond /usr: its prefix and base prefix
    (a venv and the installation it points at), asked of the interpreter itself."""
    r = subprocess.run(
        [python, "-c", "import sys; print(sys.prefix); print(sys.base_prefix)"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    paths = dict.fromkeys(os.path.realpath(p) for p in r.stdout.split())
    return tuple(p for p in paths if not (p == "/usr" or p.startswith("/usr/")))


def gpu_table(gpus: Mapping[str, int]) -> list[sandbox.NvidiaGpu]:
    """Test and tooling helper: NvidiaGpu entries from uuid -> minor (bus ids made up)."""
    return [sandbox.NvidiaGpu(u, m, f"0000:{m:02x}:00.0") for u, m in gpus.items()]
