"""Pure pieces of the runner: /proc parsing, line splitting, bounded buffering, path checks."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rigmesh.exec.outbuf import LineSplitter, OutputBuffer, OutputDropped, OutputLine, Stream
from rigmesh.exec.paths import (
    UnsafePathError,
    check_relpath,
    collect_outputs,
    tree_bytes,
    write_inputs,
)
from rigmesh.exec.proctree import parse_stat, read_stat


def test_parse_stat_with_hostile_comm() -> None:
    # comm is the executable name, chosen by the job: it may contain spaces and parentheses.
    line = "4242 (a) b) (c) S 17 4242 4242 0 -1 4194560 " + " ".join(["0"] * 12) + " 987 0 25 0"
    st = parse_stat(line)
    assert (st.pid, st.state, st.ppid, st.pgrp, st.session) == (4242, "S", 17, 4242, 4242)
    assert st.start_ticks == 987 and st.rss_bytes == 25 * os.sysconf("SC_PAGE_SIZE")


def test_read_stat_of_self() -> None:
    me = read_stat(os.getpid())
    assert me is not None and me.alive and me.ppid == os.getppid()
    assert read_stat(2**22 + 12345) is None


@settings(max_examples=60, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=30), st.integers(1, 64))
def test_line_splitter_preserves_bytes_and_bounds_lines(chunks: list[bytes], max_line: int) -> None:
    sp = LineSplitter(max_line)
    lines = [line for c in chunks for line in sp.feed(c)] + sp.flush()
    assert b"".join(lines) == b"".join(chunks)
    assert all(0 < len(x) <= max_line for x in lines)
    # Every line but possibly the last ends in a newline or is exactly max_line long.
    assert all(x.endswith(b"\n") or len(x) == max_line for x in lines[:-1])


def test_output_buffer_drops_with_marker_and_recovers() -> None:
    buf = OutputBuffer(max_bytes=10)
    buf.push(Stream.STDOUT, b"12345\n", 1)
    buf.push(Stream.STDOUT, b"abcdef\n", 2)  # does not fit: dropped
    buf.push(Stream.STDERR, b"zz\n", 3)  # fits
    assert buf.pop() == OutputLine(Stream.STDOUT, b"12345\n", 1)
    buf.push(Stream.STDOUT, b"next\n", 4)
    buf.close(5)
    rest = []
    while (ev := buf.pop()) is not None:
        rest.append(ev)
    assert rest == [
        OutputDropped(Stream.STDOUT, 7, 3),
        OutputLine(Stream.STDERR, b"zz\n", 3),
        OutputLine(Stream.STDOUT, b"next\n", 4),
    ]
    assert buf.dropped_bytes == 7 and buf.held_bytes == 0
    assert buf.total_bytes == {Stream.STDOUT: 18, Stream.STDERR: 3}


@pytest.mark.parametrize("good", ["a", "a/b/c.txt", "...", "a..b", ".hidden", "ünï/cödé"])
def test_check_relpath_accepts(good: str) -> None:
    assert "/".join(check_relpath(good)) == good


@pytest.mark.parametrize(
    "bad", ["", "/abs", "a/", "a//b", ".", "..", "a/./b", "a/../b", "x\\y", "n\x00", "a/" * 40]
)
def test_check_relpath_refuses(bad: str) -> None:
    with pytest.raises(UnsafePathError):
        check_relpath(bad)


def test_write_inputs_refuses_symlinked_directory(tmp_path) -> None:
    # If anything placed a symlink in the working directory, writes must not go through it.
    outside = tmp_path / "outside"
    outside.mkdir()
    work = tmp_path / "work"
    work.mkdir()
    (work / "d").symlink_to(outside)
    with pytest.raises(UnsafePathError):
        write_inputs(str(work), {"d/x": b"1"}, max_files=10, max_total_bytes=10)
    assert list(outside.iterdir()) == []
    with pytest.raises(UnsafePathError):  # a file and a directory of the same name
        write_inputs(str(work), {"f": b"1", "f/g": b"2"}, max_files=10, max_total_bytes=10)


def test_collect_refuses_symlinked_subdir(tmp_path) -> None:
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "key").write_bytes(b"k")
    work = tmp_path / "work"
    work.mkdir()
    (work / "out").symlink_to(secret)
    got = collect_outputs(str(work), "out", max_total_bytes=100)
    assert got.files == {} and got.skipped
    whole = collect_outputs(str(work), None, max_total_bytes=100)
    assert whole.files == {} and dict(whole.skipped) == {"out": "symlink"}


def test_collect_file_count_budget(tmp_path) -> None:
    for i in range(5):
        (tmp_path / f"f{i}").write_bytes(b"x")
    got = collect_outputs(str(tmp_path), None, max_total_bytes=100, max_files=3)
    assert list(got.files) == ["f0", "f1", "f2"] and got.truncated


def test_tree_bytes_counts_allocation(tmp_path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_bytes(b"x" * 100_000)
    with open(tmp_path / "sparse", "wb") as f:
        f.seek(1 << 30)  # a 1 GiB hole costs nothing on disk
        f.write(b"1")
    assert 100_000 <= tree_bytes(str(tmp_path)) < 1 << 20


def test_runner_isolation_values_are_the_offer_field_values() -> None:
    from rigmesh.exec import Isolation
    from rigmesh.market.offer import ISOLATION_LEVELS

    assert tuple(level.value for level in Isolation) == ISOLATION_LEVELS
