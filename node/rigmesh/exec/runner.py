"""The provider's job runner: one job = a command plus input files, run under limits, under trio.

`Runner` and `Job` are the interface the rental shell talks to. Two implementations: the
`SubprocessRunner` here (a plain subprocess of the node's user: not a sandbox) and
`rigmesh.exec.confined.ConfinedRunner` (namespaces through bubblewrap, limits through cgroups).
Both share one supervision loop (`SupervisedJob`); what differs is the `Containment` that finds,
measures and kills a job's processes: a /proc tree walk here, a cgroup there.

Lifecycle, in trio's terms: `async with runner.start(spec) as job:` creates the working directory,
writes the inputs, spawns the job and supervises it in a nursery owned by the context manager.
Leaving the block kills whatever is still running (stop means stop), waits for the kill to finish
and removes the working directory, so nothing outlives its parent scope. Inside the block:
`job.output()` streams stdout/stderr live, `await job.wait()` gives the `JobResult`,
`await job.stop()` kills on request, `await job.collect_outputs()` reads files back.
"""

from __future__ import annotations

import contextlib
import ctypes
import enum
import os
import resource
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Protocol

import trio

from rigmesh.exec import proctree
from rigmesh.exec.outbuf import LineSplitter, OutputBuffer, OutputEvent, Stream
from rigmesh.exec.paths import CollectedOutputs, collect_outputs, tree_bytes, write_inputs

MiB = 1 << 20
GiB = 1 << 30

TOKEN_ENV = "RIGMESH_JOB_TOKEN"
# Variables the runner owns: a renter must not widen its GPU set or hide from the tracker.
RESERVED_ENV = frozenset({"CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER", TOKEN_ENV})

_PR_SET_CHILD_SUBREAPER = 36
_LIBC = ctypes.CDLL(None, use_errno=True)
_PRCTL = _LIBC.prctl  # resolved here, in the parent, so the forked child does no symbol lookup


class Isolation(enum.Enum):
    """What separates a job from the provider's host. The values go on the wire in offers.

    NONE: the job runs as the node's own user (`SubprocessRunner`): it can read what the node can,
    use the network, see every process and GPU. Only for renters the provider trusts.
    NAMESPACES: own user, mount, PID, IPC, UTS and network namespaces (bubblewrap): a read-only
    system, only its working directory writable, no network, only its rented GPUs' device nodes.
    Memory and process limits are polled (the host gave no writable cgroup).
    NAMESPACES_CGROUP: the same, plus limits the kernel enforces: memory (OOM kill), process count,
    CPU quota, the devices controller for GPUs, and freeze-and-kill of the whole cgroup.
    """

    NONE = "none"
    NAMESPACES = "namespaces"
    NAMESPACES_CGROUP = "namespaces+cgroup"


class StopReason(enum.Enum):
    """Why a job ended. Everything except EXITED and SIGNALED means the runner killed it."""

    EXITED = "exited"  # the root process exited by itself (any exit code)
    SIGNALED = "signaled"  # the root died of a signal the runner did not send
    STOPPED = "stopped"  # stop() was called, or the owning scope ended while it ran
    TIMEOUT = "timeout"  # wall-clock limit
    MEMORY = "memory"  # memory of the whole job over the limit (polled, or the kernel's OOM kill)
    DISK = "disk"  # working directory over its byte budget / full, or one file over RLIMIT_FSIZE
    PROCESSES = "processes"  # too many processes in the tree, or the kernel refused a fork


class JobSpecError(ValueError):
    """The job spec is malformed (empty command, reserved env var, bad limit)."""


class JobStartError(RuntimeError):
    """The command could not be started (not found, not executable)."""


@dataclass(frozen=True)
class Limits:
    """Per-job limits. `None` switches a limit off."""

    wall_clock_s: float = 3600.0
    # Resident memory of the whole process tree, polled. RSS double-counts pages shared between
    # forked processes, so this errs on the side of the provider.
    memory_bytes: int | None = 8 * GiB
    # RLIMIT_AS per process: off by default because CUDA reserves far more virtual address space
    # than it touches, and a GPU job would fail at init under any realistic value.
    address_space_bytes: int | None = None
    # Counted by the runner (RLIMIT_NPROC is per uid, not per job); under a cgroup, pids.max counts
    # tasks, so threads count too there.
    max_processes: int | None = 256
    cpus: float | None = None  # CPU time per wall-clock second, in cores (cgroup CPU quota only)
    max_open_files: int = 4096  # RLIMIT_NOFILE per process
    max_file_bytes: int | None = 4 * GiB  # RLIMIT_FSIZE: one file, anywhere; SIGXFSZ -> DISK
    max_disk_bytes: int | None = 20 * GiB  # allocated bytes under the working dir, polled
    max_input_files: int = 10_000
    max_input_bytes: int = 1 * GiB
    output_buffer_bytes: int = 1 * MiB  # unread stdout+stderr held for the consumer
    max_line_bytes: int = 64 * 1024
    poll_interval_s: float = 0.25  # process tree and memory
    disk_poll_interval_s: float = 1.0  # a directory walk costs more than a /proc scan

    def __post_init__(self) -> None:
        if self.wall_clock_s <= 0 or self.poll_interval_s <= 0 or self.disk_poll_interval_s <= 0:
            raise JobSpecError("time limits must be positive")
        if self.cpus is not None and self.cpus <= 0:
            raise JobSpecError("cpus must be positive")
        if self.output_buffer_bytes < self.max_line_bytes or self.max_line_bytes < 1:
            raise JobSpecError("output_buffer_bytes must hold at least one max_line_bytes line")


@dataclass(frozen=True)
class JobSpec:
    argv: tuple[str, ...]
    inputs: Mapping[str, bytes] = field(default_factory=dict)  # relative path -> content
    env: Mapping[str, str] = field(default_factory=dict)  # added to a minimal environment
    gpus: tuple[str, ...] = ()  # CUDA_VISIBLE_DEVICES entries (UUIDs preferred); () = no GPU
    limits: Limits = field(default_factory=Limits)
    merge_stderr: bool = False  # one pipe, so stdout/stderr order is exactly the job's order

    def __post_init__(self) -> None:
        if not self.argv or not all(isinstance(a, str) and "\x00" not in a for a in self.argv):
            raise JobSpecError("argv must be a non-empty tuple of strings without NUL")
        for k, v in self.env.items():
            if k in RESERVED_ENV:
                raise JobSpecError(f"env var {k} is set by the runner")
            if not k or "=" in k or "\x00" in k or "\x00" in v:
                raise JobSpecError(f"bad env var {k!r}")
        for g in self.gpus:
            if not g or "," in g:
                raise JobSpecError(f"bad GPU id {g!r}")


@dataclass(frozen=True)
class JobResult:
    reason: StopReason
    exit_code: int | None  # set when the root exited by itself
    signal: int | None  # the signal that ended the root, if any
    wall_ms: int
    peak_rss_bytes: int
    peak_processes: int
    peak_disk_bytes: int
    stdout_bytes: int
    stderr_bytes: int
    dropped_bytes: int  # output the consumer never saw (buffer full)
    killed_processes: int  # processes the runner had to SIGKILL at the end (0 for a clean exit)
    survivors: int  # processes of the tree still alive after the kill; should always be 0
    detail: str = ""  # which limit stopped it and how it was seen, for people and logs
    cpu_ms: int | None = None  # CPU time of the whole job, where a cgroup counted it

    @property
    def ok(self) -> bool:
        return self.reason is StopReason.EXITED and self.exit_code == 0


class Job(Protocol):
    job_id: str
    workdir: str

    def output(self) -> AsyncIterator[OutputEvent]: ...

    async def stop(self) -> None: ...

    async def wait(self) -> JobResult: ...

    async def collect_outputs(
        self, subdir: str | None = "out", max_total_bytes: int = 64 * MiB
    ) -> CollectedOutputs: ...

    def live_processes(self) -> int: ...


class Runner(Protocol):
    isolation: Isolation  # what this runner's jobs are confined by (offers advertise it)

    def start(self, spec: JobSpec) -> AbstractAsyncContextManager[Job]: ...


def rlimits(limits: Limits) -> list[tuple[int, int]]:
    """The job's per-process rlimits, each clamped to this process's hard limit."""
    rl: list[tuple[int, int]] = [
        (resource.RLIMIT_NOFILE, limits.max_open_files),
        (resource.RLIMIT_CORE, 0),  # a core dump of a big job would eat the disk budget
    ]
    if limits.max_file_bytes is not None:
        rl.append((resource.RLIMIT_FSIZE, limits.max_file_bytes))
    if limits.address_space_bytes is not None:
        rl.append((resource.RLIMIT_AS, limits.address_space_bytes))
    # An unprivileged node cannot raise a hard limit: never ask for more than it has, or the
    # spawn would fail inside the child.
    clamped = []
    for res, val in rl:
        hard = resource.getrlimit(res)[1]
        clamped.append((res, val if hard == resource.RLIM_INFINITY else min(val, hard)))
    return clamped


def _make_preexec(limits: Limits) -> Callable[[], None]:
    rl = rlimits(limits)
    setrlimit, prctl = resource.setrlimit, _PRCTL

    # Runs in the child between fork and exec: no imports, no locks, no logging. Subreaper: when a
    # process in the job dies, its orphans reparent to the job's root instead of init, so the
    # tracker still reaches them through the parent chain.
    def preexec() -> None:
        for res, val in rl:
            setrlimit(res, (val, val))
        prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)

    return preexec


def job_env(spec: JobSpec, *, home: str, tmpdir: str, path: str, token: str) -> dict[str, str]:
    """The job's whole environment: a minimal base, the renter's additions, the runner's own."""
    env = {"PATH": path, "HOME": home, "TMPDIR": tmpdir, "LANG": "C.UTF-8"}
    env.update(spec.env)
    # Empty = no device visible to CUDA. PCI order so indices agree with NVML and nvidia-smi.
    env["CUDA_VISIBLE_DEVICES"] = ",".join(spec.gpus)
    env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
    env[TOKEN_ENV] = token
    return env


# -- containment: how a job's processes are counted, measured and killed -----------------------


@dataclass(frozen=True)
class LimitHit:
    """A limit that stopped (or is about to stop) a job, and how the runner saw it."""

    reason: StopReason
    detail: str


@dataclass(frozen=True)
class Sample:
    processes: int
    memory_bytes: int
    hit: LimitHit | None = None


@dataclass(frozen=True)
class Final:
    """What a containment knows once the job is dead: limits the kernel enforced, exact peaks."""

    hit: LimitHit | None = None
    peak_memory_bytes: int = 0
    peak_processes: int = 0
    cpu_ms: int | None = None


class Containment(Protocol):
    """The supervisor calls the blocking methods from a worker thread, one call at a time."""

    def sample(self) -> Sample: ...

    def disk(self) -> tuple[int, LimitHit | None]: ...  # bytes used by the working directory

    async def kernel_event(self) -> LimitHit: ...  # returns when the kernel reports a limit hit

    def kill(self) -> tuple[int, int]: ...  # (processes signalled, survivors)

    def finish(self) -> Final: ...


def _mib(n: int) -> str:
    return f"{n / MiB:.1f} MiB"


class TreeContainment:
    """The job is the process tree below its root, walked in /proc; limits are polled."""

    def __init__(self, tracker: proctree.TreeTracker, limits: Limits, workdir: str) -> None:
        self.tracker = tracker
        self.limits = limits
        self.workdir = workdir

    def sample(self) -> Sample:
        lim = self.limits
        live = self.tracker.poll()
        rss = sum(st.rss_bytes for st in live)
        hit = None
        if lim.memory_bytes is not None and rss > lim.memory_bytes:
            hit = LimitHit(
                StopReason.MEMORY,
                f"resident memory of the tree {_mib(rss)} > limit {_mib(lim.memory_bytes)} "
                f"(polled every {lim.poll_interval_s:g} s)",
            )
        elif lim.max_processes is not None and len(live) > lim.max_processes:
            hit = LimitHit(
                StopReason.PROCESSES,
                f"{len(live)} processes in the tree > limit {lim.max_processes} "
                f"(polled every {lim.poll_interval_s:g} s)",
            )
        return Sample(len(live), rss, hit)

    def disk(self) -> tuple[int, LimitHit | None]:
        return polled_disk(self.workdir, self.limits)

    async def kernel_event(self) -> LimitHit:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    def kill(self) -> tuple[int, int]:
        n = proctree.kill_tree(self.tracker)
        return n, len(self.tracker.poll())

    def finish(self) -> Final:
        return Final()


def polled_disk(workdir: str, lim: Limits) -> tuple[int, LimitHit | None]:
    """Allocated bytes under the working directory against the budget (a directory walk)."""
    used = tree_bytes(workdir)
    if lim.max_disk_bytes is not None and used > lim.max_disk_bytes:
        return used, LimitHit(
            StopReason.DISK,
            f"{_mib(used)} allocated under the working directory > budget "
            f"{_mib(lim.max_disk_bytes)} (polled every {lim.disk_poll_interval_s:g} s)",
        )
    return used, None


def wait_status(rc: int) -> tuple[int | None, int | None]:
    """(exit code, signal) of a root process from subprocess's returncode."""
    return (None, -rc) if rc < 0 else (rc, None)


class SupervisedJob:
    """A running (or finished) job. Use through the `Job` Protocol."""

    def __init__(
        self,
        spec: JobSpec,
        workdir: str,
        token: str,
        decode_status: Callable[[int], tuple[int | None, int | None]] = wait_status,
    ) -> None:
        self.job_id = token.rsplit(".", 1)[-1][:16]
        self.workdir = workdir
        self.spec = spec
        self._token = token
        self._decode_status = decode_status
        self._buf = OutputBuffer(spec.limits.output_buffer_bytes)
        self._wakeup = trio.Event()
        self._stop_requested = trio.Event()
        self._done = trio.Event()
        self._result: JobResult | None = None
        self._output_taken = False
        self._live = 0
        self._start_ns = time.monotonic_ns()
        self._open_pumps = 0
        self._pumps_finished = trio.Event()

    # -- public API --------------------------------------------------------------------------

    async def output(self) -> AsyncIterator[OutputEvent]:
        """Live stdout/stderr events in the order the runner read them. One consumer only."""
        if self._output_taken:
            raise RuntimeError("output() can be consumed once")
        self._output_taken = True
        while True:
            ev = self._buf.pop()
            if ev is not None:
                yield ev
                continue
            if self._buf.closed:
                return
            self._wakeup = trio.Event()
            await self._wakeup.wait()

    async def stop(self) -> None:
        """Kill the whole job now (no grace period) and wait until it is gone."""
        self._stop_requested.set()
        await self._done.wait()

    async def wait(self) -> JobResult:
        await self._done.wait()
        assert self._result is not None
        return self._result

    @property
    def result(self) -> JobResult | None:
        return self._result

    def live_processes(self) -> int:
        """Processes in the job at the last poll (for telemetry: is the job alive)."""
        return self._live

    async def collect_outputs(
        self, subdir: str | None = "out", max_total_bytes: int = 64 * MiB
    ) -> CollectedOutputs:
        """Files under `workdir/subdir`, bounded; call after wait() for a consistent view."""
        return await trio.to_thread.run_sync(
            lambda: collect_outputs(self.workdir, subdir, max_total_bytes=max_total_bytes)
        )

    # -- supervision ---------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def supervised(
        self, proc: trio.Process, containment: Containment
    ) -> AsyncIterator[SupervisedJob]:
        """Supervise `proc` for the duration of the block; leaving it kills the job."""
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(self._run, proc, containment)
                try:
                    yield self
                finally:
                    with trio.CancelScope(shield=True):
                        self._stop_requested.set()
                        await self._done.wait()
        except BaseExceptionGroup as eg:
            # The nursery is our implementation detail: the supervisor never raises, so a
            # lone exception came from the caller's block. Give it back unwrapped.
            if len(eg.exceptions) == 1:
                raise eg.exceptions[0] from None
            raise

    def _now_ns(self) -> int:
        return time.monotonic_ns() - self._start_ns

    def _push(self, stream: Stream, line: bytes) -> None:
        self._buf.push(stream, line, self._now_ns())
        self._wakeup.set()

    async def _pump(self, pipe: trio.abc.ReceiveStream, stream: Stream) -> None:
        splitter = LineSplitter(self.spec.limits.max_line_bytes)
        try:
            while chunk := await pipe.receive_some(65536):
                for line in splitter.feed(chunk):
                    self._push(stream, line)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass  # closed by the supervisor after the kill: a leftover holder of the pipe
        finally:
            for line in splitter.flush():
                self._push(stream, line)
            self._open_pumps -= 1
            if self._open_pumps == 0:
                self._pumps_finished.set()

    async def _run(
        self, proc: trio.Process, containment: Containment, task_status: trio.TaskStatus[None]
    ) -> None:
        # Shielded: outside cancellation must not interrupt the kill-and-account sequence. The
        # supervisor still always ends, because the owner's exit path sets _stop_requested.
        with trio.CancelScope(shield=True):
            await self._supervise(proc, containment, task_status)

    async def _supervise(
        self, proc: trio.Process, containment: Containment, task_status: trio.TaskStatus[None]
    ) -> None:
        lim = self.spec.limits
        peak_rss = peak_procs = peak_disk = 0
        stop: LimitHit | None = None  # the first reason to stop wins
        t0 = time.monotonic()
        task_status.started()

        async with trio.open_nursery() as pumps:
            assert proc.stdout is not None
            self._open_pumps = 1 if proc.stderr is None else 2
            pumps.start_soon(self._pump, proc.stdout, Stream.STDOUT)
            if proc.stderr is not None:
                pumps.start_soon(self._pump, proc.stderr, Stream.STDERR)

            with trio.move_on_after(lim.wall_clock_s) as timeout_scope:
                async with trio.open_nursery() as watch:

                    def stop_with(hit: LimitHit) -> None:
                        nonlocal stop
                        if stop is None:
                            stop = hit
                        watch.cancel_scope.cancel()

                    async def on_exit() -> None:
                        await proc.wait()
                        watch.cancel_scope.cancel()

                    async def on_stop() -> None:
                        await self._stop_requested.wait()
                        stop_with(LimitHit(StopReason.STOPPED, "stop() or the owning scope ended"))

                    async def on_kernel_event() -> None:
                        stop_with(await containment.kernel_event())

                    async def poll_tree() -> None:
                        nonlocal peak_rss, peak_procs
                        while True:
                            # In a worker thread: a job with hundreds of threads costs a
                            # few ms to walk, which the event loop should not stall for.
                            s = await trio.to_thread.run_sync(containment.sample)
                            self._live = s.processes
                            peak_rss = max(peak_rss, s.memory_bytes)
                            peak_procs = max(peak_procs, s.processes)
                            if s.hit is not None:
                                stop_with(s.hit)
                                return
                            await trio.sleep(lim.poll_interval_s)

                    async def poll_disk() -> None:
                        nonlocal peak_disk
                        if lim.max_disk_bytes is None:
                            return
                        while True:
                            used, hit = await trio.to_thread.run_sync(
                                containment.disk, abandon_on_cancel=True
                            )
                            peak_disk = max(peak_disk, used)
                            if hit is not None:
                                stop_with(hit)
                                return
                            await trio.sleep(lim.disk_poll_interval_s)

                    watch.start_soon(on_exit)
                    watch.start_soon(on_stop)
                    watch.start_soon(on_kernel_event)
                    watch.start_soon(poll_tree)
                    watch.start_soon(poll_disk)
            if timeout_scope.cancelled_caught and stop is None:
                stop = LimitHit(StopReason.TIMEOUT, f"wall-clock limit {lim.wall_clock_s:g} s")

            # Kill whatever is left, even after a clean exit: a job is its whole tree, and
            # daemonized leftovers must not outlive the rental. Shielded: this must finish.
            with trio.CancelScope(shield=True):
                killed, survivors = await trio.to_thread.run_sync(containment.kill)
                await proc.wait()
                # A process that escaped every net (should not happen) could hold our pipes open
                # forever; give the pumps a moment to drain, then close the pipes.
                with trio.move_on_after(1.0):
                    await self._pumps_finished.wait()
                for pipe in (proc.stdout, proc.stderr):
                    if pipe is not None:
                        await pipe.aclose()
                fin = await trio.to_thread.run_sync(containment.finish)

        rc = proc.returncode
        assert rc is not None
        code, sig = self._decode_status(rc)
        if stop is None:
            if fin.hit is not None and (fin.hit.reason is StopReason.MEMORY or code != 0):
                stop = fin.hit  # the kernel enforced a limit and the job did not get over it
            elif sig == signal.SIGXFSZ:
                stop = LimitHit(
                    StopReason.DISK,
                    f"a file reached RLIMIT_FSIZE ({lim.max_file_bytes} bytes): the kernel "
                    "refused the write and sent SIGXFSZ",
                )
        reason = stop.reason if stop is not None else StopReason.EXITED
        if stop is None and sig is not None:
            reason = StopReason.SIGNALED
        detail = stop.detail if stop is not None else ""
        if reason is StopReason.SIGNALED:
            detail = f"the job's root process died of signal {sig}"
        self._live = 0
        self._result = JobResult(
            reason=reason,
            exit_code=code if reason is StopReason.EXITED else None,
            signal=sig,
            wall_ms=int((time.monotonic() - t0) * 1000),
            peak_rss_bytes=max(peak_rss, fin.peak_memory_bytes),
            peak_processes=max(peak_procs, fin.peak_processes),
            peak_disk_bytes=peak_disk,
            stdout_bytes=self._buf.total_bytes[Stream.STDOUT],
            stderr_bytes=self._buf.total_bytes[Stream.STDERR],
            dropped_bytes=self._buf.dropped_bytes,
            killed_processes=killed,
            survivors=survivors,
            detail=detail,
            cpu_ms=fin.cpu_ms,
        )
        self._buf.close(self._now_ns())
        self._wakeup.set()
        self._done.set()


def validate_runner_id(runner_id: str) -> str:
    if not all(c.isalnum() or c in "-_" for c in runner_id):
        raise JobSpecError("runner_id: letters, digits, '-' and '_' only")
    return runner_id


def new_token(runner_id: str) -> str:
    """A job's token: the runner's id (for reaping after a crash), then 128 random bits."""
    return f"{runner_id}.{secrets.token_hex(16)}"


def prepare_workdir(workdir: str, spec: JobSpec) -> None:
    """Write the inputs and make tmp/ and out/ (blocking: call from a worker thread)."""
    lim = spec.limits
    write_inputs(
        workdir, spec.inputs, max_files=lim.max_input_files, max_total_bytes=lim.max_input_bytes
    )
    for d in ("tmp", "out"):
        os.makedirs(os.path.join(workdir, d), exist_ok=True)


class SubprocessRunner:
    """Runs jobs as plain subprocesses. See README.md in this package for what that isolates."""

    isolation = Isolation.NONE

    def __init__(
        self,
        base_dir: str | None = None,
        *,
        keep_workdirs: bool = False,
        runner_id: str = "",
    ) -> None:
        """`runner_id`, stable across restarts of one node (e.g. from its PeerId), prefixes each
        job's token so `reap_stale_jobs` after a crash kills this node's leftovers only."""
        self.base_dir = base_dir
        self.keep_workdirs = keep_workdirs
        self.runner_id = validate_runner_id(runner_id)

    def reap_stale(self) -> int:
        """Kill the jobs an earlier run of this node left (the node calls it at start-up, as
        for `ConfinedRunner`): a job outlives its SIGKILLed node otherwise."""
        return reap_stale_jobs(self.runner_id) if self.runner_id else 0

    @contextlib.asynccontextmanager
    async def start(self, spec: JobSpec) -> AsyncIterator[SupervisedJob]:
        workdir = tempfile.mkdtemp(prefix="rigmesh-job-", dir=self.base_dir)

        def prepare() -> dict[int, int]:
            # One thread hop for all start-up file work: on a loaded host each hop costs a
            # scheduler wake-up, and start-up latency is mostly hops.
            prepare_workdir(workdir, spec)
            # Processes that exist now cannot be ours: the kill-time token net skips them.
            # Taken per job, not cached per runner: a stale listing would make the net read
            # the environment of every process started since, a lot on a host with churn.
            return proctree.listing()

        try:
            baseline = await trio.to_thread.run_sync(prepare)
            token = new_token(self.runner_id)
            job = SupervisedJob(spec, workdir, token)
            path = os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin")
            # Scratch files in the working directory, so they count against the disk budget.
            env = job_env(
                spec, home=workdir, tmpdir=os.path.join(workdir, "tmp"), path=path, token=token
            )
            try:
                proc = await trio.lowlevel.open_process(
                    list(spec.argv),
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT if spec.merge_stderr else subprocess.PIPE,
                    cwd=workdir,
                    env=env,
                    start_new_session=True,  # own session and process group: killpg reaches it
                    preexec_fn=_make_preexec(spec.limits),
                    close_fds=True,
                )
            except (OSError, subprocess.SubprocessError) as e:
                raise JobStartError(f"cannot start {spec.argv[0]!r}: {e}") from e
            tracker = proctree.TreeTracker(proc.pid, token.encode(), baseline)
            async with job.supervised(proc, TreeContainment(tracker, spec.limits, workdir)):
                yield job
        finally:
            if not self.keep_workdirs:
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(
                        lambda: shutil.rmtree(workdir, ignore_errors=True)
                    )


async def run_to_completion(runner: Runner, spec: JobSpec) -> tuple[JobResult, list[OutputEvent]]:
    """Convenience: run a job, keep all its (bounded) output events, return the result."""
    events: list[OutputEvent] = []
    async with runner.start(spec) as job:
        async for ev in job.output():
            events.append(ev)
        return await job.wait(), events


def reap_stale_jobs(runner_id: str, keep: frozenset[str] = frozenset()) -> int:
    """Kill job trees left by an earlier run of this node (it crashed or was SIGKILLed).

    A job outlives a dead node (no parent-death signal: trio spawns from worker threads), and a
    restarted node cannot reattach to its pipes, so its leftovers are killed: every process whose
    RIGMESH_JOB_TOKEN starts with `runner_id.` and is not in `keep`. Reads every process's
    environment once, so call it at start-up, not in a loop. Returns how many were killed.
    """
    prefix = f"{TOKEN_ENV}={runner_id}.".encode()
    me = os.getpid()
    victims: dict[bytes, list[int]] = {}
    for pid in proctree.listing():
        if pid == me:
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = f.read(1 << 20)
        except OSError:
            continue
        for var in env.split(b"\0"):
            if var.startswith(prefix):
                token = var.split(b"=", 1)[1]
                if token.decode(errors="replace") not in keep:
                    victims.setdefault(token, []).append(pid)
                break
    killed = 0
    for token, pids in victims.items():
        for pid in pids:  # each process is a root for the tree walk: its children die with it
            tracker = proctree.TreeTracker(pid, token)
            killed += proctree.kill_tree(tracker)
    return killed
