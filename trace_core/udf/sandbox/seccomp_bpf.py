"""Seccomp-BPF filters for the UDF sandbox, built and installed with the stdlib only (ctypes).

This file runs inside the sandbox (imported by ``worker.py``), so it imports nothing of
Trace's. Two filters stack: ``zygote_filter`` (the warm worker and everything it forks: no
namespaces, mounts, ptrace, kernel modules, bpf, keyrings, io_uring, sockets other than
AF_UNIX...) and ``call_filter`` (each forked call on top of that: no fork, no exec, no new
process via clone, no setuid family, signals only to itself). A forbidden call kills the
process (``SECCOMP_RET_KILL_PROCESS``: it dies of SIGSYS, reported as ``sandbox_violation``);
``clone3`` answers ENOSYS so glibc falls back to ``clone``, whose flags a filter can check.
Only x86_64 is built; other architectures raise ``OSError`` (the caller fails closed).
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import struct

AUDIT_ARCH_X86_64 = 0xC000003E
X32_SYSCALL_BIT = 0x40000000

RET_KILL_PROCESS = 0x80000000
RET_ERRNO = 0x00050000
RET_ALLOW = 0x7FFF0000

# BPF opcodes
LD_W_ABS = 0x20
JEQ_K = 0x15
JGE_K = 0x35
JSET_K = 0x45
JA = 0x05
RET_K = 0x06

OFF_NR = 0
OFF_ARCH = 4


def _arg_lo(i: int) -> int:
    return 16 + 8 * i  # low 32 bits of args[i] (little-endian)


# x86_64 syscall numbers
NR = {
    "socket": 41,
    "clone": 56,
    "fork": 57,
    "vfork": 58,
    "execve": 59,
    "kill": 62,
    "setrlimit": 160,
    "prlimit64": 302,
    "ptrace": 101,
    "syslog": 103,
    "setuid": 105,
    "setgid": 106,
    "setreuid": 113,
    "setregid": 114,
    "setgroups": 116,
    "setresuid": 117,
    "setresgid": 119,
    "setfsuid": 122,
    "setfsgid": 123,
    "capset": 126,
    "rt_sigqueueinfo": 129,
    "uselib": 134,
    "personality": 135,
    "vhangup": 153,
    "pivot_root": 155,
    "adjtimex": 159,
    "chroot": 161,
    "acct": 163,
    "settimeofday": 164,
    "mount": 165,
    "umount2": 166,
    "swapon": 167,
    "swapoff": 168,
    "reboot": 169,
    "sethostname": 170,
    "setdomainname": 171,
    "iopl": 172,
    "ioperm": 173,
    "create_module": 174,
    "init_module": 175,
    "delete_module": 176,
    "quotactl": 179,
    "tkill": 200,
    "lookup_dcookie": 212,
    "clock_settime": 227,
    "tgkill": 234,
    "kexec_load": 246,
    "add_key": 248,
    "request_key": 249,
    "keyctl": 250,
    "migrate_pages": 256,
    "unshare": 272,
    "move_pages": 279,
    "rt_tgsigqueueinfo": 297,
    "perf_event_open": 298,
    "fanotify_init": 300,
    "name_to_handle_at": 303,
    "open_by_handle_at": 304,
    "clock_adjtime": 305,
    "setns": 308,
    "process_vm_readv": 310,
    "process_vm_writev": 311,
    "kcmp": 312,
    "finit_module": 313,
    "kexec_file_load": 320,
    "bpf": 321,
    "execveat": 322,
    "userfaultfd": 323,
    "pidfd_send_signal": 424,
    "io_uring_setup": 425,
    "io_uring_enter": 426,
    "io_uring_register": 427,
    "open_tree": 428,
    "move_mount": 429,
    "fsopen": 430,
    "fsconfig": 431,
    "fsmount": 432,
    "fspick": 433,
    "pidfd_open": 434,
    "clone3": 435,
    "pidfd_getfd": 438,
    "mount_setattr": 442,
}

AF_UNIX = 1
CLONE_THREAD = 0x00010000
CLONE_NEW_ANY = (
    0x00000080  # CLONE_NEWTIME
    | 0x00020000  # CLONE_NEWNS
    | 0x02000000  # CLONE_NEWCGROUP
    | 0x04000000  # CLONE_NEWUTS
    | 0x08000000  # CLONE_NEWIPC
    | 0x10000000  # CLONE_NEWUSER
    | 0x20000000  # CLONE_NEWPID
    | 0x40000000  # CLONE_NEWNET
)

#: Never needed by CPython or pyarrow; fatal in the zygote and in every call.
ZYGOTE_KILL = [
    "ptrace",
    "syslog",
    "uselib",
    "personality",
    "vhangup",
    "pivot_root",
    "adjtimex",
    "chroot",
    "acct",
    "settimeofday",
    "mount",
    "umount2",
    "swapon",
    "swapoff",
    "reboot",
    "sethostname",
    "setdomainname",
    "iopl",
    "ioperm",
    "create_module",
    "init_module",
    "delete_module",
    "quotactl",
    "lookup_dcookie",
    "clock_settime",
    "kexec_load",
    "add_key",
    "request_key",
    "keyctl",
    "migrate_pages",
    "unshare",
    "move_pages",
    "perf_event_open",
    "fanotify_init",
    "name_to_handle_at",
    "open_by_handle_at",
    "clock_adjtime",
    "setns",
    "process_vm_readv",
    "process_vm_writev",
    "kcmp",
    "finit_module",
    "kexec_file_load",
    "bpf",
    "userfaultfd",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "open_tree",
    "move_mount",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "pidfd_getfd",
    "mount_setattr",
]

#: Added for each call (the zygote itself forks, and dropped privileges before its filter).
CALL_KILL = [
    "fork",
    "vfork",
    "execve",
    "execveat",
    "setuid",
    "setgid",
    "setreuid",
    "setregid",
    "setgroups",
    "setresuid",
    "setresgid",
    "setfsuid",
    "setfsgid",
    "capset",
    "pidfd_open",
    "pidfd_send_signal",
    "tkill",
]


def _ins(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
    return struct.pack("HBBI", code, jt, jf, k & 0xFFFFFFFF)


def _prologue() -> list[bytes]:
    return [
        _ins(LD_W_ABS, OFF_ARCH),
        _ins(JEQ_K, AUDIT_ARCH_X86_64, 1, 0),
        _ins(RET_K, RET_KILL_PROCESS),
        _ins(LD_W_ABS, OFF_NR),
        _ins(JGE_K, X32_SYSCALL_BIT, 0, 1),
        _ins(RET_K, RET_KILL_PROCESS),
    ]


def _kill_if_nr(name: str) -> list[bytes]:
    return [_ins(JEQ_K, NR[name], 0, 1), _ins(RET_K, RET_KILL_PROCESS)]


def _kill_if_arg_not(name: str, arg: int, value: int) -> list[bytes]:
    """Kill when syscall ``name`` is called with args[arg] (low 32 bits) != value."""
    return [
        _ins(JEQ_K, NR[name], 0, 4),
        _ins(LD_W_ABS, _arg_lo(arg)),
        _ins(JEQ_K, value & 0xFFFFFFFF, 1, 0),
        _ins(RET_K, RET_KILL_PROCESS),
        _ins(LD_W_ABS, OFF_NR),
    ]


def zygote_filter() -> bytes:
    prog = _prologue()
    for name in ZYGOTE_KILL:
        prog += _kill_if_nr(name)
    # clone3's flags live in memory a filter cannot read: answer ENOSYS (glibc then uses clone)
    prog += [_ins(JEQ_K, NR["clone3"], 0, 1), _ins(RET_K, RET_ERRNO | errno.ENOSYS)]
    # clone with any CLONE_NEW* flag
    prog += [
        _ins(JEQ_K, NR["clone"], 0, 4),
        _ins(LD_W_ABS, _arg_lo(0)),
        _ins(JSET_K, CLONE_NEW_ANY, 0, 1),
        _ins(RET_K, RET_KILL_PROCESS),
        _ins(LD_W_ABS, OFF_NR),
    ]
    prog += _kill_if_arg_not("socket", 0, AF_UNIX)
    prog.append(_ins(RET_K, RET_ALLOW))
    return b"".join(prog)


def call_filter(pid: int) -> bytes:
    prog = _prologue()
    for name in CALL_KILL:
        prog += _kill_if_nr(name)
    # clone only for threads
    prog += [
        _ins(JEQ_K, NR["clone"], 0, 4),
        _ins(LD_W_ABS, _arg_lo(0)),
        _ins(JSET_K, CLONE_THREAD, 1, 0),
        _ins(RET_K, RET_KILL_PROCESS),
        _ins(LD_W_ABS, OFF_NR),
    ]
    # rlimits may be read, never set (prlimit64 with a new limit: args[2] != NULL)
    prog += [
        _ins(JEQ_K, NR["prlimit64"], 0, 7),
        _ins(LD_W_ABS, _arg_lo(2)),
        _ins(JEQ_K, 0, 0, 3),
        _ins(LD_W_ABS, _arg_lo(2) + 4),
        _ins(JEQ_K, 0, 0, 1),
        _ins(JA, 1),
        _ins(RET_K, RET_KILL_PROCESS),
        _ins(LD_W_ABS, OFF_NR),
    ]
    # signals only to itself, by its own pid (not kill(0) or kill(-1), which reach the zygote)
    for name in ("kill", "tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo"):
        prog += _kill_if_arg_not(name, 0, pid)
    prog.append(_ins(RET_K, RET_ALLOW))
    return b"".join(prog)


PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


_libc = ctypes.CDLL(None, use_errno=True)


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    rc = _libc.prctl(
        ctypes.c_int(option),
        ctypes.c_ulong(arg2),
        ctypes.c_ulong(arg3),
        ctypes.c_ulong(arg4),
        ctypes.c_ulong(arg5),
    )
    if rc < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl({option}): {os.strerror(err)}")
    return int(rc)


def install(program: bytes) -> None:
    """Install ``program`` on this process (no_new_privs first). Raises ``OSError``."""
    if platform.machine() != "x86_64":
        raise OSError(errno.ENOSYS, f"no seccomp filter built for {platform.machine()}")
    buf = ctypes.create_string_buffer(program, len(program))
    fprog = _SockFprog(len(program) // 8, ctypes.cast(buf, ctypes.c_void_p))
    prctl(PR_SET_NO_NEW_PRIVS, 1)
    prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(fprog))
