"""cgroup v2's device filter: a small BPF program, built here, loaded and attached with bpf(2).

cgroup v2 has no devices.allow / devices.deny files. The kernel instead runs every
BPF_PROG_TYPE_CGROUP_DEVICE program attached to a task's cgroup (and its ancestors) on each
open or mknod of a device node, and refuses unless all of them return 1. runc and systemd build
the same kind of program; this one is an allow-list: for each rule, compare the device type, the
access asked for, the major and (unless any) the minor, and return 1 on a match; 0 at the end.

`device_program()` is pure (rules -> instruction bytes) and unit-tested by decoding; `attach()`
loads it and attaches it to a job's cgroup (root, a kernel with CONFIG_CGROUP_BPF). The program
lives as long as the cgroup; the runner removes the cgroup at the end of the job.
"""

from __future__ import annotations

import ctypes
import os
import platform
import struct
from collections.abc import Sequence

from rigmesh.exec.cgroups import DeviceRule

# Instruction encoding (linux/bpf.h, linux/bpf_common.h)
LDX_MEM_W = 0x61  # dst = *(u32 *)(src + off)
ALU64_AND_K = 0x57
ALU64_RSH_K = 0x77
ALU64_MOV_K = 0xB7
ALU64_MOV_X = 0xBF
JMP_JNE_K = 0x55  # if dst != imm: pc += off
JMP_EXIT = 0x95

BPF_PROG_LOAD = 5
BPF_PROG_ATTACH = 8
BPF_PROG_TYPE_CGROUP_DEVICE = 15
BPF_CGROUP_DEVICE = 6
BPF_F_ALLOW_MULTI = 2  # keep the programs systemd or a container engine put above ours

DEV_BLOCK, DEV_CHAR = 1, 2  # BPF_DEVCG_DEV_*
ACC_MKNOD, ACC_READ, ACC_WRITE = 1, 2, 4  # BPF_DEVCG_ACC_*
_SYS_BPF = {"x86_64": 321, "aarch64": 280}

_LIBC = ctypes.CDLL(None, use_errno=True)


def insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)


def _access_mask(access: str) -> int:
    return (
        (ACC_MKNOD if "m" in access else 0)
        | (ACC_READ if "r" in access else 0)
        | (ACC_WRITE if "w" in access else 0)
    )


def device_program(rules: Sequence[DeviceRule]) -> bytes:
    """The allow-list program. Registers on entry: r1 = struct bpf_cgroup_dev_ctx
    {u32 access_type (access << 16 | type), u32 major, u32 minor}."""
    prog = [
        insn(LDX_MEM_W, dst=2, src=1, off=0),  # r2 = access_type
        insn(ALU64_AND_K, dst=2, imm=0xFFFF),  # r2 = device type
        insn(LDX_MEM_W, dst=3, src=1, off=0),
        insn(ALU64_RSH_K, dst=3, imm=16),  # r3 = access asked for
        insn(LDX_MEM_W, dst=4, src=1, off=4),  # r4 = major
        insn(LDX_MEM_W, dst=5, src=1, off=8),  # r5 = minor
    ]
    for r in rules:
        block = [
            insn(JMP_JNE_K, dst=2, imm=DEV_CHAR if r.kind == "c" else DEV_BLOCK),
            insn(ALU64_MOV_X, dst=1, src=3),  # r1 = asked & ~allowed: nonzero = too much
            insn(ALU64_AND_K, dst=1, imm=~_access_mask(r.access) & 0x7),
            insn(JMP_JNE_K, dst=1, imm=0),
            insn(JMP_JNE_K, dst=4, imm=r.major),
        ]
        if r.minor is not None:
            block.append(insn(JMP_JNE_K, dst=5, imm=r.minor))
        block += [insn(ALU64_MOV_K, dst=0, imm=1), insn(JMP_EXIT)]
        # Each conditional jump skips to the next rule: past the rest of this block.
        fixed = []
        for i, b in enumerate(block):
            code, regs, _, imm = struct.unpack("<BBhi", b)
            if code == JMP_JNE_K:
                b = struct.pack("<BBhi", code, regs, len(block) - i - 1, imm)
            fixed.append(b)
        prog += fixed
    prog += [insn(ALU64_MOV_K, dst=0, imm=0), insn(JMP_EXIT)]
    return b"".join(prog)


def _bpf(cmd: int, attr: ctypes.Array[ctypes.c_char]) -> int:
    nr = _SYS_BPF.get(platform.machine())
    if nr is None:
        raise OSError(0, f"bpf(2) syscall number unknown on {platform.machine()}")
    ret = _LIBC.syscall(nr, cmd, attr, len(attr))
    if ret < 0:
        e = ctypes.get_errno()
        raise OSError(e, f"bpf cmd {cmd}: {os.strerror(e)}")
    return int(ret)


def load(rules: Sequence[DeviceRule]) -> int:
    """Load the program; returns its fd. The verifier's log is asked for only after a refusal
    (a log that does not fit its buffer fails the load with ENOSPC)."""
    code = device_program(rules)
    insns = ctypes.create_string_buffer(code, len(code))
    license_ = ctypes.create_string_buffer(b"Apache-2.0")  # GPL-only helpers are not used
    log = ctypes.create_string_buffer(1 << 16)
    for level in (0, 1):
        attr = ctypes.create_string_buffer(128)
        # union bpf_attr, BPF_PROG_LOAD: prog_type, insn_cnt, insns, license, log_level,
        # log_size, log_buf
        struct.pack_into(
            "<IIQQIIQ",
            attr,
            0,
            BPF_PROG_TYPE_CGROUP_DEVICE,
            len(code) // 8,
            ctypes.addressof(insns),
            ctypes.addressof(license_),
            level,
            len(log) if level else 0,
            ctypes.addressof(log) if level else 0,
        )
        try:
            return _bpf(BPF_PROG_LOAD, attr)
        except OSError as e:
            if level:
                verifier = log.value.decode(errors="replace")[-2000:]
                raise OSError(e.errno, f"{e.strerror}; verifier: {verifier}") from e
    raise AssertionError("unreachable")


def attach(cgroup_dir: str, rules: Sequence[DeviceRule]) -> None:
    """Allow only `rules` to tasks of the (v2) cgroup at `cgroup_dir`."""
    prog = load(rules)
    try:
        cg = os.open(cgroup_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            attr = ctypes.create_string_buffer(128)
            # BPF_PROG_ATTACH: target_fd, attach_bpf_fd, attach_type, attach_flags
            struct.pack_into("<IIII", attr, 0, cg, prog, BPF_CGROUP_DEVICE, BPF_F_ALLOW_MULTI)
            _bpf(BPF_PROG_ATTACH, attr)
        finally:
            os.close(cg)
    finally:
        os.close(prog)  # the attachment holds its own reference
