"""The provider's job runner: one job = a command plus input files, run under limits, under trio.

`Runner` and `Job` are the interface the rental shell talks to; `SubprocessRunner` is the one
implementation here (a plain subprocess, for hosts without a container engine). A container runner
implements the same two Protocols.

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


class StopReason(enum.Enum):
    """Why a job ended. Everything except EXITED and SIGNALED means the runner killed it."""

    EXITED = "exited"  # the root process exited by itself (any exit code)
    SIGNALED = "signaled"  # the root died of a signal the runner did not send
    STOPPED = "stopped"  # stop() was called, or the owning scope ended while it ran
    TIMEOUT = "timeout"  # wall-clock limit
    MEMORY = "memory"  # resident memory of the whole tree over the limit
    DISK = "disk"  # working directory over its byte budget, or one file over RLIMIT_FSIZE
    PROCESSES = "processes"  # too many processes in the tree


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
    max_processes: int | None = 256  # counted by the runner: RLIMIT_NPROC is per uid, not per job
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
    def start(self, spec: JobSpec) -> AbstractAsyncContextManager[Job]: ...


def _make_preexec(limits: Limits) -> Callable[[], None]:
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
    rl = clamped
    setrlimit, prctl = resource.setrlimit, _PRCTL

    # Runs in the child between fork and exec: no imports, no locks, no logging. Subreaper: when a
    # process in the job dies, its orphans reparent to the job's root instead of init, so the
    # tracker still reaches them through the parent chain.
    def preexec() -> None:
        for res, val in rl:
            setrlimit(res, (val, val))
        prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)

    return preexec


def _job_env(spec: JobSpec, workdir: str, token: str) -> dict[str, str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
        "HOME": workdir,
        "TMPDIR": os.path.join(workdir, "tmp"),  # so scratch files count against the disk budget
        "LANG": "C.UTF-8",
    }
    env.update(spec.env)
    # Empty = no device visible to CUDA. PCI order so indices agree with NVML and nvidia-smi.
    env["CUDA_VISIBLE_DEVICES"] = ",".join(spec.gpus)
    env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
    env[TOKEN_ENV] = token
    return env


class SubprocessJob:
    """A running (or finished) job under SubprocessRunner. Use through the `Job` Protocol."""

    def __init__(self, spec: JobSpec, workdir: str, token: str) -> None:
        self.job_id = token.rsplit(".", 1)[-1][:16]
        self.workdir = workdir
        self.spec = spec
        self._token = token
        self._buf = OutputBuffer(spec.limits.output_buffer_bytes)
        self._wakeup = trio.Event()
        self._stop_requested = trio.Event()
        self._done = trio.Event()
        self._result: JobResult | None = None
        self._output_taken = False
        self._live = 0
        self._start_ns = 0
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
        """Kill the whole tree now (no grace period) and wait until it is gone."""
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
        """Processes in the tree at the last poll (for telemetry: is the job alive)."""
        return self._live

    async def collect_outputs(
        self, subdir: str | None = "out", max_total_bytes: int = 64 * MiB
    ) -> CollectedOutputs:
        """Files under `workdir/subdir`, bounded; call after wait() for a consistent view."""
        return await trio.to_thread.run_sync(
            lambda: collect_outputs(self.workdir, subdir, max_total_bytes=max_total_bytes)
        )

    # -- supervision ---------------------------------------------------------------------------

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
        self, proc: trio.Process, baseline: dict[int, int], task_status: trio.TaskStatus[None]
    ) -> None:
        # Shielded: outside cancellation must not interrupt the kill-and-account sequence. The
        # supervisor still always ends, because the owner's exit path sets _stop_requested.
        with trio.CancelScope(shield=True):
            await self._supervise(proc, baseline, task_status)

    async def _supervise(
        self, proc: trio.Process, baseline: dict[int, int], task_status: trio.TaskStatus[None]
    ) -> None:
        lim = self.spec.limits
        tracker = proctree.TreeTracker(proc.pid, self._token.encode(), baseline)
        peak_rss = peak_procs = peak_disk = 0
        reason: StopReason | None = None
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

                    async def on_exit() -> None:
                        await proc.wait()
                        watch.cancel_scope.cancel()

                    async def on_stop() -> None:
                        nonlocal reason
                        await self._stop_requested.wait()
                        reason = StopReason.STOPPED
                        watch.cancel_scope.cancel()

                    async def poll_tree() -> None:
                        nonlocal reason, peak_rss, peak_procs
                        while True:
                            # In a worker thread: a job with hundreds of threads costs a
                            # few ms to walk, which the event loop should not stall for.
                            live = await trio.to_thread.run_sync(tracker.poll)
                            self._live = len(live)
                            rss = sum(st.rss_bytes for st in live)
                            peak_rss, peak_procs = max(peak_rss, rss), max(peak_procs, len(live))
                            if lim.memory_bytes is not None and rss > lim.memory_bytes:
                                reason = StopReason.MEMORY
                            elif lim.max_processes is not None and len(live) > lim.max_processes:
                                reason = StopReason.PROCESSES
                            if reason is not None:
                                watch.cancel_scope.cancel()
                                return
                            await trio.sleep(lim.poll_interval_s)

                    async def poll_disk() -> None:
                        nonlocal reason, peak_disk
                        if lim.max_disk_bytes is None:
                            return
                        while True:
                            used = await trio.to_thread.run_sync(
                                tree_bytes, self.workdir, abandon_on_cancel=True
                            )
                            peak_disk = max(peak_disk, used)
                            if used > lim.max_disk_bytes:
                                reason = StopReason.DISK
                                watch.cancel_scope.cancel()
                                return
                            await trio.sleep(lim.disk_poll_interval_s)

                    watch.start_soon(on_exit)
                    watch.start_soon(on_stop)
                    watch.start_soon(poll_tree)
                    watch.start_soon(poll_disk)
            if timeout_scope.cancelled_caught and reason is None:
                reason = StopReason.TIMEOUT

            # Kill whatever is left, even after a clean exit: a job is its whole tree, and
            # daemonized leftovers must not outlive the rental. Shielded: this must finish.
            with trio.CancelScope(shield=True):

                def kill_and_recount() -> tuple[int, int]:
                    n = proctree.kill_tree(tracker)
                    return n, len(tracker.poll())

                killed, survivors = await trio.to_thread.run_sync(kill_and_recount)
                await proc.wait()
                # A process that escaped every net (should not happen) could hold our pipes open
                # forever; give the pumps a moment to drain, then close the pipes.
                with trio.move_on_after(1.0):
                    await self._pumps_finished.wait()
                for pipe in (proc.stdout, proc.stderr):
                    if pipe is not None:
                        await pipe.aclose()

        rc = proc.returncode
        sig = -rc if rc is not None and rc < 0 else None
        if reason is None:
            if sig is None:
                reason = StopReason.EXITED
            elif sig == signal.SIGXFSZ:
                reason = StopReason.DISK  # RLIMIT_FSIZE: the kernel stopped a file growing
            else:
                reason = StopReason.SIGNALED
        self._live = 0
        self._result = JobResult(
            reason=reason,
            exit_code=rc if reason is StopReason.EXITED else None,
            signal=sig,
            wall_ms=int((time.monotonic() - t0) * 1000),
            peak_rss_bytes=peak_rss,
            peak_processes=peak_procs,
            peak_disk_bytes=peak_disk,
            stdout_bytes=self._buf.total_bytes[Stream.STDOUT],
            stderr_bytes=self._buf.total_bytes[Stream.STDERR],
            dropped_bytes=self._buf.dropped_bytes,
            killed_processes=killed,
            survivors=survivors,
        )
        self._buf.close(self._now_ns())
        self._wakeup.set()
        self._done.set()


class SubprocessRunner:
    """Runs jobs as plain subprocesses. See README.md in this package for what that isolates."""

    def __init__(
        self,
        base_dir: str | None = None,
        *,
        keep_workdirs: bool = False,
        runner_id: str = "",
    ) -> None:
        """`runner_id`, stable across restarts of one node (e.g. from its PeerId), prefixes each
        job's token so `reap_stale_jobs` after a crash kills this node's leftovers only."""
        if not all(c.isalnum() or c in "-_" for c in runner_id):
            raise JobSpecError("runner_id: letters, digits, '-' and '_' only")
        self.base_dir = base_dir
        self.keep_workdirs = keep_workdirs
        self.runner_id = runner_id

    @contextlib.asynccontextmanager
    async def start(self, spec: JobSpec) -> AsyncIterator[SubprocessJob]:
        lim = spec.limits
        workdir = tempfile.mkdtemp(prefix="rigmesh-job-", dir=self.base_dir)

        def prepare() -> dict[int, int]:
            # One thread hop for all start-up file work: on a loaded host each hop costs a
            # scheduler wake-up, and start-up latency is mostly hops.
            write_inputs(
                workdir,
                spec.inputs,
                max_files=lim.max_input_files,
                max_total_bytes=lim.max_input_bytes,
            )
            for d in ("tmp", "out"):
                os.makedirs(os.path.join(workdir, d), exist_ok=True)
            # Processes that exist now cannot be ours: the kill-time token net skips them.
            # Taken per job, not cached per runner: a stale listing would make the net read
            # the environment of every process started since, a lot on a host with churn.
            return proctree.listing()

        try:
            baseline = await trio.to_thread.run_sync(prepare)
            token = f"{self.runner_id}.{secrets.token_hex(16)}"
            job = SubprocessJob(spec, workdir, token)
            job._start_ns = time.monotonic_ns()
            try:
                proc = await trio.lowlevel.open_process(
                    list(spec.argv),
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT if spec.merge_stderr else subprocess.PIPE,
                    cwd=workdir,
                    env=_job_env(spec, workdir, token),
                    start_new_session=True,  # own session and process group: killpg reaches it
                    preexec_fn=_make_preexec(lim),
                    close_fds=True,
                )
            except (OSError, subprocess.SubprocessError) as e:
                raise JobStartError(f"cannot start {spec.argv[0]!r}: {e}") from e
            try:
                async with trio.open_nursery() as nursery:
                    await nursery.start(job._run, proc, baseline)
                    try:
                        yield job
                    finally:
                        with trio.CancelScope(shield=True):
                            job._stop_requested.set()
                            await job._done.wait()
            except BaseExceptionGroup as eg:
                # The nursery is our implementation detail: the supervisor never raises, so a
                # lone exception came from the caller's block. Give it back unwrapped.
                if len(eg.exceptions) == 1:
                    raise eg.exceptions[0] from None
                raise
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
