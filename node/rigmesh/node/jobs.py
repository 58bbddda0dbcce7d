"""The provider's side of the job's data and life: inputs in, the job run, its output and results
out, its GPUs sampled.

- `Inputs` takes a rental's input files in order, exactly the names, sizes and SHA-256 the
  proposal promised (content-addressed: a byte that does not match is refused and the file
  dropped), on disk under the node's home until the job starts.
- `OutputLog` keeps the newest bytes of a job's output with their offsets, for `fetch`.
- `Jobs` runs each rental's job through the node's `Runner` (confined where the host allows),
  samples the rented GPUs beside it, collects the files it leaves in ``out/`` with their digests,
  and tells the node (callbacks the node turns into engine events) when a job started and how it
  ended.

A provider node that dies loses its jobs: the runner kills what a dead node left when the node
comes back (`Runner.reap_stale`), and the rentals end with the job `lost` (spec/rental.md 11).
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from rigmesh.exec import JobResult, JobSpec, Limits, Runner, StopReason
from rigmesh.exec.outbuf import OutputLine
from rigmesh.exec.runner import JobSpecError, JobStartError
from rigmesh.rental.evidence import TelemetrySample
from rigmesh.rental.messages import Chunk, Fetch, Input, JobState
from rigmesh.rental.workload import FileDigest, Workload
from rigmesh.wire.errors import InvalidField, UnexpectedMessage

log = logging.getLogger(__name__)

#: Result files a job may leave, in all.
MAX_RESULTS = 256 << 20

Sampler = Callable[[Callable[[], int]], list[TelemetrySample]]


class Inputs:
    """Input files of rentals, received in order and checked against their digests."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._expected: dict[bytes, dict[str, FileDigest]] = {}
        self._received: dict[bytes, dict[str, int]] = {}

    def expect(self, rental_id: bytes, workload: Workload) -> None:
        if rental_id in self._expected:
            return
        self._expected[rental_id] = {f.name: f for f in workload.inputs}
        self._received.setdefault(rental_id, {})
        (self.root / rental_id.hex()).mkdir(parents=True, exist_ok=True)

    def _path(self, rental_id: bytes, name: str) -> Path:
        return self.root / rental_id.hex() / hashlib.sha256(name.encode()).hexdigest()

    def accept(self, chunk: Input) -> bool:
        """Store a chunk; True once every input of the rental is complete and checked. Raises
        `InvalidField` (the renter's fault) for a name, offset or content the proposal did not
        promise, and drops the file."""
        expected = self._expected.get(chunk.rental_id)
        if expected is None:
            raise UnexpectedMessage("input for a rental not funded here")
        digest = expected.get(chunk.name)
        if digest is None:
            raise InvalidField(f"input {chunk.name!r} is not one the proposal named")
        got = self._received[chunk.rental_id].get(chunk.name, 0)
        if chunk.offset + len(chunk.data) <= got:
            return self.complete(chunk.rental_id)  # a retry of bytes we hold
        if chunk.offset != got:
            raise InvalidField(f"input {chunk.name!r}: offset {chunk.offset}, expected {got}")
        if got + len(chunk.data) > digest.size:
            raise InvalidField(f"input {chunk.name!r}: more than its {digest.size} bytes")
        path = self._path(chunk.rental_id, chunk.name)
        with path.open("ab") as f:
            f.write(chunk.data)
        got += len(chunk.data)
        self._received[chunk.rental_id][chunk.name] = got
        if got == digest.size and hashlib.sha256(path.read_bytes()).digest() != digest.sha256:
            path.unlink()
            self._received[chunk.rental_id][chunk.name] = 0
            raise InvalidField(f"input {chunk.name!r} does not match its SHA-256")
        return self.complete(chunk.rental_id)

    def complete(self, rental_id: bytes) -> bool:
        received = self._received.get(rental_id, {})
        return all(received.get(n, 0) == d.size for n, d in self._expected[rental_id].items())

    def files(self, rental_id: bytes) -> dict[str, bytes]:
        return {n: self._path(rental_id, n).read_bytes()
                for n in self._expected.get(rental_id, {})}

    def drop(self, rental_id: bytes) -> None:
        self._expected.pop(rental_id, None)
        self._received.pop(rental_id, None)
        shutil.rmtree(self.root / rental_id.hex(), ignore_errors=True)


class OutputLog:
    """The newest `keep` bytes of a job's output, by absolute offset."""

    def __init__(self, keep: int) -> None:
        self.keep = keep
        self._buf = bytearray()
        self._start = 0  # absolute offset of _buf[0]
        self.ended = False

    def append(self, data: bytes) -> None:
        self._buf += data
        if len(self._buf) > self.keep:
            cut = len(self._buf) - self.keep
            del self._buf[:cut]
            self._start += cut

    @property
    def end(self) -> int:
        return self._start + len(self._buf)

    def read(self, offset: int, max_bytes: int) -> tuple[int, bytes, bool]:
        """(offset actually served, bytes, eof): an offset older than what is kept is served
        from the oldest byte kept."""
        offset = min(max(offset, self._start), self.end)
        data = bytes(self._buf[offset - self._start: offset - self._start + max_bytes])
        return offset, data, self.ended and offset + len(data) >= self.end


@dataclass
class _Running:
    rental_id: bytes
    log: OutputLog
    job: Any = None
    stop: trio.Event = field(default_factory=trio.Event)
    results: dict[str, bytes] = field(default_factory=dict)


class Jobs:
    """Every job of this provider node."""

    def __init__(
        self,
        runner: Runner,
        home: Path,
        *,
        on_started: Callable[[bytes], Awaitable[None]],
        on_ended: Callable[[bytes, int, int | None, tuple[FileDigest, ...], str],
                           Awaitable[None]],
        on_samples: Callable[[bytes, list[TelemetrySample]], None],
        sampler: Sampler | None,
        gpus: tuple[str, ...] = (),
        telemetry_seconds: float = 5.0,
        output_keep: int = 1 << 20,
    ) -> None:
        self.runner = runner
        self.inputs = Inputs(home / "inputs")
        self.on_started, self.on_ended, self.on_samples = on_started, on_ended, on_samples
        self.sampler = sampler
        self.gpus = gpus
        self.telemetry_seconds = telemetry_seconds
        self.output_keep = output_keep
        self.jobs: dict[bytes, _Running] = {}
        self._nursery: trio.Nursery | None = None

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Owns the jobs: leaving it (the node stopping) stops every one."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    def start(self, rental_id: bytes, workload: Workload, wall_clock_s: int) -> None:
        if rental_id in self.jobs or self._nursery is None:
            return
        running = self.jobs[rental_id] = _Running(rental_id, OutputLog(self.output_keep))
        self._nursery.start_soon(self._job, running, workload, wall_clock_s)

    def stop(self, rental_id: bytes) -> None:
        running = self.jobs.get(rental_id)
        if running is not None:
            running.stop.set()

    async def _job(self, running: _Running, workload: Workload, wall_clock_s: int) -> None:
        rid = running.rental_id
        gpus = self.gpus[: workload.gpus]
        state, code, outputs, detail = JobState.FAILED, None, (), ""
        try:
            spec = JobSpec(
                argv=workload.argv, inputs=self.inputs.files(rid), gpus=gpus,
                limits=Limits(wall_clock_s=max(1, wall_clock_s)), merge_stderr=True,
            )
            async with self.runner.start(spec) as job:
                running.job = job
                if self.sampler is not None:
                    # The first heartbeat follows the start at once: it carries evidence too.
                    # The root process runs once start() returned; the runner may not have
                    # counted the tree yet.
                    self.on_samples(rid, self.sampler(lambda: max(1, job.live_processes())))
                await self.on_started(rid)
                async with trio.open_nursery() as watch:
                    watch.start_soon(self._pump, running, job)
                    if self.sampler is not None:
                        watch.start_soon(self._sample, rid, job)

                    async def stopper() -> None:
                        await running.stop.wait()
                        await job.stop()

                    watch.start_soon(stopper)
                    result: JobResult = await job.wait()
                    watch.cancel_scope.cancel()
                collected = await job.collect_outputs("out", max_total_bytes=MAX_RESULTS)
                running.results = collected.files
                outputs = tuple(
                    FileDigest(name, len(data), hashlib.sha256(data).digest())
                    for name, data in sorted(collected.files.items())
                )[:64]
                state, code, detail = _job_state(result)
        except (JobStartError, JobSpecError, OSError) as exc:
            detail = f"could not start: {exc}"
            log.warning("rental %s: job %s", rid.hex()[:12], detail)
        finally:
            running.log.ended = True
            self.inputs.drop(rid)
        with trio.CancelScope(shield=True):
            await self.on_ended(rid, state, code, outputs, detail)

    async def _pump(self, running: _Running, job: Any) -> None:
        async for ev in job.output():
            if isinstance(ev, OutputLine):
                running.log.append(ev.data)
            else:
                running.log.append(f"[{ev.nbytes} bytes of output dropped]\n".encode())

    async def _sample(self, rental_id: bytes, job: Any) -> None:
        assert self.sampler is not None
        while True:
            self.on_samples(rental_id, self.sampler(job.live_processes))
            await trio.sleep(self.telemetry_seconds)

    def fetch(self, req: Fetch) -> Chunk:
        running = self.jobs.get(req.rental_id)
        if running is None:
            raise UnexpectedMessage("no job of this rental here")
        if req.file is None:
            offset, data, eof = running.log.read(req.offset, req.max)
            return Chunk(req.rental_id, None, offset, data, eof)
        content = running.results.get(req.file)
        if content is None:
            raise InvalidField(f"no result file {req.file!r}")
        data = content[req.offset: req.offset + req.max]
        return Chunk(req.rental_id, req.file, req.offset, data,
                     req.offset + len(data) >= len(content))

    def forget(self, rental_id: bytes) -> None:
        self.jobs.pop(rental_id, None)
        self.inputs.drop(rental_id)


def _job_state(result: JobResult) -> tuple[int, int | None, str]:
    """The heartbeat's job state for how the runner says the job ended."""
    if result.reason is StopReason.EXITED:
        return JobState.EXITED, result.exit_code or 0, ""
    if result.reason in (StopReason.STOPPED, StopReason.TIMEOUT):
        return JobState.STOPPED, None, result.reason.value
    # Died of a signal, or broke a limit (memory, disk, processes).
    return JobState.FAILED, None, f"{result.reason.value}: {result.detail}".strip(": ")
