"""The runners, with real processes: streaming, limits, kills, hostile inputs.

Tests that hold for any runner take `any_runner` and run against the subprocess runner and the
confined runner both; tests of the subprocess runner's own machinery (its /proc tree walk, its
token net, polled limits) take `runner`. The confined runner's escape and hard-limit tests are in
test_exec_confined.py.
"""

from __future__ import annotations

import os
import textwrap

import pytest
import trio
from exec_fixtures import JOB_PY

from rigmesh.exec import proctree
from rigmesh.exec.outbuf import OutputDropped, OutputLine, Stream
from rigmesh.exec.paths import InputTooLargeError, UnsafePathError
from rigmesh.exec.proctree import read_stat
from rigmesh.exec.runner import (
    Job,
    JobSpec,
    JobSpecError,
    JobStartError,
    Limits,
    Runner,
    StopReason,
    SubprocessRunner,
    reap_stale_jobs,
    run_to_completion,
)

PY = JOB_PY
FAST = Limits(wall_clock_s=20, poll_interval_s=0.02, disk_poll_interval_s=0.05)


def py(code: str, **kw: object) -> JobSpec:
    limits = kw.pop("limits", FAST)
    return JobSpec(argv=(PY, "-u", "-c", textwrap.dedent(code)), limits=limits, **kw)  # type: ignore[arg-type]


def alive(pid: int) -> bool:
    """A pid counts as alive if it exists and is not a zombie (zombies hold nothing)."""
    st = read_stat(pid)
    return st is not None and st.alive


@pytest.fixture
def runner(tmp_path) -> SubprocessRunner:
    return SubprocessRunner(str(tmp_path))


@pytest.fixture(params=["subprocess", "confined"])
def any_runner(request, tmp_path) -> Runner:
    if request.param == "subprocess":
        return SubprocessRunner(str(tmp_path))
    return request.getfixturevalue("confined_runner")


def job_leftovers(runner: Runner, tmp_path) -> list[str]:
    """What a runner left where it makes working directories (the confined runner: its jobs
    directory, where its formatted disk templates are kept on purpose)."""
    root = getattr(runner, "jobs_dir", str(tmp_path))
    return [n for n in os.listdir(root) if not n.startswith(".ext4-")]


def pidns_members(namespaces: set[bytes]) -> list[int]:
    """Live host processes in any of these PID namespaces (a confined job's, seen from outside)."""
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                ns = os.readlink(f"/proc/{name}/ns/pid").encode()
            except OSError:
                continue
            if ns in namespaces and alive(int(name)):
                found.append(int(name))
    return found


def leftovers(runner: Runner, holders: list[tuple[int, bytes]]) -> list[int]:
    """Which of the job's processes are still alive, as the host sees them. A confined job's
    pids are its own namespace's, so there: every live process in the job's namespaces."""
    if isinstance(runner, SubprocessRunner):
        return [p for p, _ in holders if alive(p)]
    return pidns_members({ns for _, ns in holders})


@pytest.fixture(params=["children-walk", "full-scan"])
def tree_mode(request, monkeypatch) -> str:
    """Kill tests run twice: walking children files, and the fallback for kernels without them."""
    if request.param == "full-scan":
        monkeypatch.setattr(proctree, "HAVE_CHILDREN_FILES", False)
    elif not proctree.HAVE_CHILDREN_FILES:
        pytest.skip("kernel has no /proc/<pid>/task/<tid>/children")
    return request.param


async def test_exit_code_env_inputs_and_outputs(any_runner: Runner) -> None:
    spec = py(
        """
        import os
        print(open("data/in.txt").read())
        print("CVD=" + os.environ["CUDA_VISIBLE_DEVICES"])
        print("HOME_IS_CWD=" + str(os.environ["HOME"] == os.getcwd()))
        os.makedirs("out/sub", exist_ok=True)
        open("out/result.bin", "wb").write(b"\\x00\\x01")
        open("out/sub/log.txt", "w").write("done")
        raise SystemExit(7)
        """,
        inputs={"data/in.txt": b"hello input"},
        gpus=("GPU-aaaa", "GPU-bbbb"),
    )
    async with any_runner.start(spec) as job:
        lines = [ev.data async for ev in job.output() if isinstance(ev, OutputLine)]
        res = await job.wait()
        outs = await job.collect_outputs()
        workdir = job.workdir
    assert lines == [b"hello input\n", b"CVD=GPU-aaaa,GPU-bbbb\n", b"HOME_IS_CWD=True\n"]
    assert res.reason is StopReason.EXITED and res.exit_code == 7 and not res.ok
    assert res.survivors == 0
    assert outs.files == {"out/result.bin": b"\x00\x01", "out/sub/log.txt": b"done"}
    assert not os.path.exists(workdir)  # removed when the scope ended


async def test_no_gpus_means_cuda_sees_none(any_runner: Runner) -> None:
    res, events = await run_to_completion(
        any_runner, py("import os; print(repr(os.environ['CUDA_VISIBLE_DEVICES']))")
    )
    assert res.ok
    assert [e.data for e in events if isinstance(e, OutputLine)] == [b"''\n"]


async def test_output_streams_live_in_order_with_timestamps(any_runner: Runner) -> None:
    # Lock-step: the job writes a line, then waits for the test to acknowledge it by creating a
    # file. The test can only do that if it read the line while the job was running, and the
    # order across stdout and stderr is then the job's order, whatever the machine's load.
    spec = py(
        """
        import os, sys, time
        for i in range(6):
            stream = sys.stderr if i % 2 else sys.stdout
            print(f"line {i}", file=stream)
            while not os.path.exists(f"ack{i}"):
                time.sleep(0.002)
        time.sleep(30)
        """
    )
    async with any_runner.start(spec) as job:
        got: list[OutputLine] = []
        async for ev in job.output():
            assert isinstance(ev, OutputLine)
            assert job.result is None  # read live, the job is still running
            got.append(ev)
            open(os.path.join(job.workdir, f"ack{len(got) - 1}"), "w").close()
            if len(got) == 6:
                break
        await trio.sleep(0.05)
        assert job.result is None
        await job.stop()
        res = await job.wait()
    assert [(e.stream, e.data) for e in got] == [
        (Stream.STDERR if i % 2 else Stream.STDOUT, f"line {i}\n".encode()) for i in range(6)
    ]
    ts = [e.t_ns for e in got]
    assert ts == sorted(ts) and len(set(ts)) == 6
    assert res.reason is StopReason.STOPPED and res.exit_code is None


async def test_merge_stderr_keeps_exact_order(any_runner: Runner) -> None:
    code = "import sys\nfor i in range(50): print(i, file=(sys.stderr if i % 2 else sys.stdout))"
    res, events = await run_to_completion(any_runner, py(code, merge_stderr=True))
    assert res.ok
    assert [e.data for e in events if isinstance(e, OutputLine)] == [
        f"{i}\n".encode() for i in range(50)
    ]


FORK_TREE = """
import os, sys, time

def hold():
    # One write: atomic on a pipe, lines never mix. The PID namespace lets the test find a
    # confined job's processes from outside (their pids here are the namespace's own).
    ns = os.readlink("/proc/self/ns/pid").encode()
    os.write(1, b"PID %d %s\\n" % (os.getpid(), ns))
    time.sleep(300)
    os._exit(0)

for _ in range(2):                 # children in the job's process group
    if os.fork() == 0:
        if os.fork() == 0:         # grandchild that leaves the session and group
            os.setsid()
            if os.fork() == 0:     # and its own child
                hold()
            hold()
        hold()
if os.fork() == 0:                 # classic daemon double fork: the middle process exits
    os.setsid()
    if os.fork() == 0:
        os.environ.pop("RIGMESH_JOB_TOKEN", None)
        hold()
    os._exit(0)
hold()
"""
# root + 2 x (child + setsid grandchild + its child) + orphaned daemon = 8 holders
FORK_TREE_HOLDERS = 8


async def _holders_until(job: Job, n: int) -> list[tuple[int, bytes]]:
    """(pid, PID namespace) of the first n `PID` lines the job prints."""
    got: list[tuple[int, bytes]] = []
    async for ev in job.output():
        if isinstance(ev, OutputLine) and ev.data.startswith(b"PID "):
            f = ev.data.split()
            got.append((int(f[1]), f[2] if len(f) > 2 else b""))
            if len(got) == n:
                return got
    raise AssertionError(f"job ended after {len(got)} pids")


async def _pids_until(job: Job, n: int) -> list[int]:
    return [p for p, _ in await _holders_until(job, n)]


@pytest.fixture(params=["subprocess-walk", "subprocess-scan", "confined"])
def tree_runner(request, monkeypatch, tmp_path) -> Runner:
    """Kill tests run three ways: the subprocess runner walking children files, the same with
    the full-scan fallback for kernels without them, and the confined runner (cgroup kill)."""
    if request.param == "confined":
        return request.getfixturevalue("confined_runner")
    if request.param == "subprocess-scan":
        monkeypatch.setattr(proctree, "HAVE_CHILDREN_FILES", False)
    elif not proctree.HAVE_CHILDREN_FILES:
        pytest.skip("kernel has no /proc/<pid>/task/<tid>/children")
    return SubprocessRunner(str(tmp_path))


async def test_stop_kills_whole_tree_including_setsid_escapees(tree_runner: Runner) -> None:
    async with tree_runner.start(py(FORK_TREE)) as job:
        holders = await _holders_until(job, FORK_TREE_HOLDERS)
        assert len(leftovers(tree_runner, holders)) >= FORK_TREE_HOLDERS
        await trio.sleep(0.1)  # a few polls: the tracker has seen the whole tree
        await job.stop()
        res = await job.wait()
    assert res.reason is StopReason.STOPPED
    assert res.survivors == 0
    assert res.killed_processes >= FORK_TREE_HOLDERS
    assert leftovers(tree_runner, holders) == []


async def test_leftovers_killed_after_root_exits(any_runner: Runner) -> None:
    # The root starts a setsid daemon and exits 0 at once: the job is over, the daemon must go.
    code = """
    import os, time
    if os.fork() == 0:
        os.setsid()
        ns = os.readlink("/proc/self/ns/pid").encode()
        os.write(1, b"PID %d %s\\n" % (os.getpid(), ns))
        time.sleep(300)
        os._exit(0)
    time.sleep(0.3)
    """
    async with any_runner.start(py(code)) as job:
        holders = await _holders_until(job, 1)
        res = await job.wait()
    assert res.reason is StopReason.EXITED and res.exit_code == 0
    assert res.survivors == 0
    if isinstance(any_runner, SubprocessRunner):
        assert res.killed_processes >= 1  # confined: the PID namespace's end killed it first
    assert leftovers(any_runner, holders) == []


async def test_leaving_the_scope_kills_the_job(any_runner: Runner) -> None:
    with trio.move_on_after(10) as scope:
        async with any_runner.start(py(FORK_TREE)) as job:
            holders = await _holders_until(job, FORK_TREE_HOLDERS)
            scope.cancel()  # e.g. the rental ended: the block is left while the job runs
            await trio.sleep(10)
    assert scope.cancelled_caught
    assert leftovers(any_runner, holders) == []


async def test_timeout(any_runner: Runner) -> None:
    lim = Limits(wall_clock_s=0.3, poll_interval_s=0.05)
    res, _ = await run_to_completion(any_runner, JobSpec(argv=("sleep", "30"), limits=lim))
    assert res.reason is StopReason.TIMEOUT
    assert 250 <= res.wall_ms < 5000


async def test_memory_limit(runner: SubprocessRunner) -> None:
    lim = Limits(wall_clock_s=20, memory_bytes=64 << 20, poll_interval_s=0.02)
    code = """
    import time
    chunks = []
    for _ in range(40):
        chunks.append(b"x" * (8 << 20))   # touched pages: real RSS
        time.sleep(0.01)
    time.sleep(30)
    """
    res, _ = await run_to_completion(runner, py(code, limits=lim))
    assert res.reason is StopReason.MEMORY
    assert res.peak_rss_bytes > 64 << 20


async def test_process_limit(runner: SubprocessRunner) -> None:
    lim = Limits(wall_clock_s=20, max_processes=5, poll_interval_s=0.02)
    code = """
    import os, time
    for _ in range(12):
        if os.fork() == 0:
            time.sleep(30); os._exit(0)
    time.sleep(30)
    """
    res, _ = await run_to_completion(runner, py(code, limits=lim))
    assert res.reason is StopReason.PROCESSES
    assert res.peak_processes > 5 and res.survivors == 0


async def test_disk_limit_on_working_directory(runner: SubprocessRunner) -> None:
    # Many files, each below RLIMIT_FSIZE: only the directory poll can catch this.
    lim = Limits(
        wall_clock_s=20, max_disk_bytes=8 << 20, max_file_bytes=1 << 20, disk_poll_interval_s=0.05
    )
    code = """
    import time
    for i in range(64):
        with open(f"tmp/f{i}", "wb") as f:
            f.write(b"z" * (512 << 10))
        time.sleep(0.005)
    time.sleep(30)
    """
    res, _ = await run_to_completion(runner, py(code, limits=lim))
    assert res.reason is StopReason.DISK
    assert res.peak_disk_bytes > 8 << 20


async def test_single_file_limit_is_rlimit_fsize(any_runner: Runner) -> None:
    lim = Limits(wall_clock_s=20, max_file_bytes=1 << 20)
    spec = JobSpec(argv=("dd", "if=/dev/zero", "of=big", "bs=64k", "count=64"), limits=lim)
    res, _ = await run_to_completion(any_runner, spec)
    assert res.reason is StopReason.DISK
    assert res.signal == 25  # SIGXFSZ


async def test_huge_output_is_bounded_and_never_blocks_the_child(
    any_runner: Runner,
) -> None:
    lim = Limits(wall_clock_s=20, output_buffer_bytes=64 << 10, max_line_bytes=4 << 10)
    code = """
    import sys
    line = b"y" * 99 + b"\\n"
    for _ in range(50_000):           # 5 MB of lines
        sys.stdout.buffer.write(line)
    sys.stdout.buffer.write(b"z" * (1 << 20))   # and one 1 MiB line with no newline
    """
    async with any_runner.start(py(code, limits=lim)) as job:
        res = await job.wait()  # nobody reads while it runs: it must still finish
        events = [ev async for ev in job.output()]
    assert res.reason is StopReason.EXITED and res.exit_code == 0
    assert res.stdout_bytes == 50_000 * 100 + (1 << 20)
    held = sum(len(e.data) for e in events if isinstance(e, OutputLine))
    dropped = sum(e.nbytes for e in events if isinstance(e, OutputDropped))
    assert held <= 64 << 10
    assert held + dropped == res.stdout_bytes and dropped == res.dropped_bytes
    assert max(len(e.data) for e in events if isinstance(e, OutputLine)) <= 4 << 10


@pytest.mark.parametrize(
    "path", ["/etc/passwd", "../escape", "a/../../b", "a//b", "./a", "", "a\\..\\b", "a/\x00"]
)
async def test_hostile_input_paths_refused_before_start(
    any_runner: Runner, tmp_path, path: str
) -> None:
    with pytest.raises(UnsafePathError):
        async with any_runner.start(py("print(1)", inputs={path: b"x"})):
            raise AssertionError("must not start")
    assert job_leftovers(any_runner, tmp_path) == []  # everything removed again


async def test_input_budget(any_runner: Runner) -> None:
    lim = Limits(max_input_bytes=10)
    with pytest.raises(InputTooLargeError):
        async with any_runner.start(py("1", inputs={"a": b"x" * 11}, limits=lim)):
            pass


async def test_spec_errors_and_start_errors(any_runner: Runner) -> None:
    with pytest.raises(JobSpecError):
        JobSpec(argv=())
    with pytest.raises(JobSpecError):
        JobSpec(argv=("true",), env={"CUDA_VISIBLE_DEVICES": "0,1,2,3"})
    with pytest.raises(JobStartError):
        async with any_runner.start(JobSpec(argv=("/nonexistent/binary",))):
            pass


async def test_output_collection_does_not_follow_symlinks(any_runner: Runner) -> None:
    code = """
    import os
    os.symlink("/etc/passwd", "out/passwd")
    os.symlink("/etc", "out/etcdir")
    open("out/big", "wb").write(b"b" * 5000)
    open("out/small", "wb").write(b"s" * 10)
    """
    async with any_runner.start(py(code)) as job:
        assert (await job.wait()).ok
        outs = await job.collect_outputs(max_total_bytes=1000)
    assert outs.files == {"out/small": b"s" * 10}
    assert outs.truncated
    assert dict(outs.skipped) == {
        "out/passwd": "symlink",
        "out/etcdir": "symlink",
        "out/big": "byte budget",
    }


def token_holders(token: bytes) -> list[int]:
    needle = b"RIGMESH_JOB_TOKEN=" + token if b"." in token else b"." + token
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit() and alive(int(name)):
            try:
                with open(f"/proc/{name}/environ", "rb") as f:
                    if needle in f.read():
                        found.append(int(name))
            except OSError:
                pass
    return found


async def test_runaway_forking_daemons_are_all_killed(any_runner: Runner) -> None:
    # Every process keeps spawning setsid children and the parents exit: a moving target that
    # outruns the parent chain. Nothing carrying the job's token may survive the stop.
    code = """
    import os, time
    os.write(1, os.environ["RIGMESH_JOB_TOKEN"].encode() + b"\\n")
    # Self-limiting: if this test run is itself killed before the runner can stop the job,
    # the spawner dies of old age instead of outliving the suite and starving the machine.
    give_up = time.time() + 30
    def spawn_forever():
        while time.time() < give_up:
            if os.fork() == 0:
                os.setsid()
                time.sleep(0.005)
                continue       # the child becomes the spawner
            time.sleep(0.01)
            os._exit(0)        # the parent leaves its child orphaned
        os._exit(0)
    if os.fork() == 0:
        spawn_forever()
    time.sleep(60)
    """
    lim = Limits(wall_clock_s=20, poll_interval_s=0.02, max_processes=None)
    async with any_runner.start(py(code, limits=lim)) as job:
        async for ev in job.output():
            token = ev.data.strip()
            break
        await trio.sleep(0.4)
        await job.stop()
        res = await job.wait()
    assert res.reason is StopReason.STOPPED and res.survivors == 0
    await trio.sleep(0.05)
    assert token_holders(token) == []


async def test_a_member_that_cannot_stop_does_not_hold_up_the_stop(any_runner: Runner) -> None:
    # A vfork parent waits in the kernel ('D') until its child execs, and SIGSTOP does not stop
    # it; here the child blocks opening a FIFO nobody writes to. The stop waits half a second
    # for the freeze to settle, then takes the token net and kills: not its whole 5 s deadline.
    code = """
    import os, time
    os.mkfifo("fifo")
    os.write(1, os.environ["RIGMESH_JOB_TOKEN"].encode() + b"\\n")
    pid = os.fork()
    if pid == 0:
        os.posix_spawn("/bin/true", ["true"], os.environ,
                       file_actions=[(os.POSIX_SPAWN_OPEN, 3, "fifo", os.O_RDONLY, 0)])
        os._exit(0)
    while open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "D":
        time.sleep(0.01)
    os.write(1, b"STUCK\\n")
    time.sleep(60)
    """
    lim = Limits(wall_clock_s=30, poll_interval_s=0.05)
    async with any_runner.start(py(code, limits=lim)) as job:
        lines = job.output()
        token = (await anext(lines)).data.strip()
        assert (await anext(lines)).data.strip() == b"STUCK"
        started = trio.current_time()
        with trio.fail_after(10):
            await job.stop()
            res = await job.wait()
        took = trio.current_time() - started
    assert res.reason is StopReason.STOPPED and res.survivors == 0
    assert res.killed_processes >= 3  # the root, the vfork parent and its child
    assert token_holders(token) == []
    assert took < 2.5, f"the stop took {took:.2f} s"


async def test_reap_stale_jobs_after_a_node_crash(tmp_path) -> None:
    # A job tree started by a previous run of this node (simulated: spawned directly, with the
    # token layout the runner uses), plus one of another node on the same host.
    rid = f"test{os.getpid()}"
    code = "import os, time\nif os.fork() == 0:\n    os.setsid()\ntime.sleep(60)"
    mine = await trio.lowlevel.open_process(
        [PY, "-c", code], env={**os.environ, "RIGMESH_JOB_TOKEN": f"{rid}.aaaa"}
    )
    kept = await trio.lowlevel.open_process(
        [PY, "-c", code], env={**os.environ, "RIGMESH_JOB_TOKEN": f"{rid}.bbbb"}
    )
    other = await trio.lowlevel.open_process(
        [PY, "-c", code], env={**os.environ, "RIGMESH_JOB_TOKEN": f"x{rid}.cccc"}
    )
    try:
        await trio.sleep(0.5)  # let each fork its child
        killed = await trio.to_thread.run_sync(
            lambda: reap_stale_jobs(rid, keep=frozenset({f"{rid}.bbbb"}))
        )
        assert killed == 2  # the root and its setsid child
        with trio.fail_after(5):
            await mine.wait()
        assert kept.returncode is None and other.returncode is None
        assert token_holders(b"aaaa") == []
    finally:  # clean up the two survivors cheaply: a walk from each root, no host scan
        for p in (kept, other):
            proctree.kill_tree(proctree.TreeTracker(p.pid))
            await p.wait()


async def test_token_net_catches_orphans_no_poll_saw(
    runner: SubprocessRunner, tree_mode: str
) -> None:
    # Polls 30 s apart: the tree walk never sees the daemon, which is orphaned to init when
    # the root exits. Only the kill-time token net can find it.
    code = """
    import os, time
    time.sleep(0.3)                  # after the first poll
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            os.write(1, b"PID %d\\n" % os.getpid())
            time.sleep(60)
        os._exit(0)
    time.sleep(0.3)
    """
    lim = Limits(wall_clock_s=20, poll_interval_s=30)
    async with runner.start(py(code, limits=lim)) as job:
        (pid,) = await _pids_until(job, 1)
        res = await job.wait()
    assert res.reason is StopReason.EXITED and res.exit_code == 0
    assert res.killed_processes == 1 and res.survivors == 0
    assert not alive(pid)
