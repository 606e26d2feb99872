"""Run model-written Python outside the evaluator's process, confined by the kernel.

Two modes (``docs/sandbox.md`` says exactly what each guarantees):

- ``"bwrap"``: bubblewrap starts the supervisor in new user, pid, network, ipc, uts and cgroup
  namespaces without capabilities, on an empty root that holds only the Python installation,
  ``/usr``, the ``/lib*`` links and two files of ``/etc``, read-only, plus a size-limited
  ``/tmp`` as the only writable place: no host ``/tmp``, ``/run``, ``/var``, home or socket.
- ``"landlock"`` (no bubblewrap, or no user namespaces): the program's process restricts itself
  with Landlock to reading the same files and writing its own directory, and nothing else.

In both a trusted supervisor (``_supervisor.py``) forks the program, which confines itself with
rlimits, no capabilities and a seccomp filter (no new processes, programs, sockets, signals to
others, io_uring, ...) before a fresh interpreter runs it. "passed" needs a done signal that only
trusted code sends after the program's last statement returned normally. ``"auto"`` picks bwrap,
else landlock, and refuses to run without either: there is no unconfined fallback.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import json
import math
import os
import selectors
import shutil
import signal
import site
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from infosft.checks import Number, check_value

# Read once: a program can never change the supervisor of the samples after it.
SUPERVISOR_SOURCE = Path(__file__).with_name("_supervisor.py").read_text(encoding="utf-8")
MODES = ("auto", "bwrap", "landlock")
DEFAULT_TIMEOUT_S = 3.0
MAX_TIMEOUT_S = 86400
TIMEOUT = Number(low=0, low_open=True, high=MAX_TIMEOUT_S, unit="seconds")
DEFAULT_MEMORY_BYTES = 2 * 1024**3
DEFAULT_MAX_OUTPUT_BYTES = 64 * 1024
DEFAULT_MAX_FILE_BYTES = 16 * 1024**2
DEFAULT_MAX_DISK_BYTES = 64 * 1024**2
DEFAULT_MAX_FILES = 1024
MAX_OPEN_FILES = 64
# The supervisor allows this long for confinement and interpreter start, then the timeout;
# the evaluator adds GRACE_S before it gives up on the supervisor itself.
SETUP_S = 10.0
GRACE_S = 5.0
# New user/pid/net/ipc/uts/cgroup namespaces, no capabilities, no way to regain them.
ISOLATION_FLAGS = ["--unshare-all", "--unshare-user", "--disable-userns", "--cap-drop", "ALL"]
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
# All of /etc the interpreter needs: the dynamic loader's cache and the time zone.
SYSTEM_FILES = ("/etc/ld.so.cache", "/etc/localtime")
SANDBOX_HOME = "/tmp"  # bwrap: the size-limited tmpfs, the program's cwd, HOME and TMPDIR
KNOWN_GOOD = "import math\nassert math.isclose(sum([0.1] * 10), 1.0)\nprint('sandbox ok')\n"
KNOWN_BAD = "assert 1 + 1 == 3, 'known-bad program'\n"


class SandboxError(RuntimeError):
    """The sandbox itself cannot run programs here: an infrastructure failure, never a score."""


@dataclass(frozen=True)
class SandboxResult:
    """Outcome of one sandboxed program.

    ``status`` is ``"passed"`` (its last statement returned normally), ``"failed"`` (it raised
    or exited), ``"timeout"``, ``"output_limit"`` (printed more than allowed), ``"disk_limit"``
    (wrote more than allowed), ``"killed"`` (a signal, e.g. the CPU limit), ``"rejected"`` (its
    content cannot be a program file: not text, not encodable as UTF-8, or larger than the file
    limit; it never ran) or ``"error"`` (the sandbox could not run it: not the program's
    fault). ``returncode`` is the program's exit status (negative: the signal), None when it did
    not exit by itself; ``detail`` says why.
    """

    status: str
    returncode: int | None
    output: str
    seconds: float
    mode: str
    detail: str = ""

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def validate_timeout(timeout: float) -> float:
    """``timeout`` as a float, or ValueError unless it is a number of seconds in (0, 1 day]."""
    return check_value(timeout, TIMEOUT, "the timeout")


def scrubbed_env(home: str) -> dict[str, str]:
    """The whole environment of a sandboxed program: nothing of the evaluator's is passed on."""
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": home,
        "TMPDIR": home,
        "LANG": "C.UTF-8",
        "PYTHONHASHSEED": "0",
    }


@functools.lru_cache(maxsize=1)
def interpreter_paths() -> tuple[str, ...]:
    """Directories of this Python installation (virtualenv and base), as given and resolved:
    a venv reached through a symlink, or living under /tmp, is found in both spellings."""
    paths = [sys.prefix, sys.exec_prefix, sys.base_prefix, sys.base_exec_prefix]
    paths += [os.path.dirname(sys.executable), *site.getsitepackages()]
    paths += sysconfig.get_paths().values()
    spellings = [s for path in paths for s in (os.path.abspath(path), os.path.realpath(path))]
    found = [s for s in spellings if s != "/" and os.path.isdir(s)]
    return tuple(dict.fromkeys([*found, os.path.dirname(os.path.realpath(sys.executable))]))


def site_dirs() -> list[str]:
    """Where the program's interpreter (started without ``site``) finds installed packages."""
    return [p for p in site.getsitepackages() if os.path.isdir(p)]


def readable_paths() -> list[str]:
    """Everything a sandboxed program may read: system libraries and this Python."""
    paths = [os.path.realpath(p) for p in (*SYSTEM_DIRS, *SYSTEM_FILES) if os.path.exists(p)]
    return list(dict.fromkeys([*paths, *interpreter_paths()]))


def bwrap_command(max_disk_bytes: int) -> list[str]:
    """bubblewrap's arguments: an empty read-only root with only what Python needs, and a
    size-limited tmpfs at /tmp as the one writable place."""
    exe = shutil.which("bwrap")
    if exe is None:
        raise FileNotFoundError("bwrap is not installed")
    cmd = [exe, *ISOLATION_FLAGS, "--die-with-parent", "--new-session", "--clearenv"]
    for key, value in scrubbed_env(SANDBOX_HOME).items():
        cmd += ["--setenv", key, value]
    bound = []
    for path in SYSTEM_DIRS:
        if os.path.islink(path):  # merged /usr: /lib -> usr/lib
            cmd += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            cmd += ["--ro-bind", path, path]
            bound.append(path)
    for path in SYSTEM_FILES:
        cmd += ["--ro-bind-try", path, path]
    cmd += ["--dev", "/dev", "--size", str(max_disk_bytes), "--tmpfs", SANDBOX_HOME]
    for path in interpreter_paths():  # after /tmp, so that a venv under /tmp shows through
        if not any(path == b or path.startswith(b + "/") for b in bound):
            cmd += ["--ro-bind", path, path]
    # No /proc: the program cannot reach other processes' descriptors or memory through it.
    cmd += ["--chdir", SANDBOX_HOME, "--remount-ro", "/dev", "--remount-ro", "/"]
    return [*cmd, "--"]


@functools.lru_cache(maxsize=1)
def private_root() -> str:
    """A directory of this evaluator's own (0700) holding the landlock mode's work dirs."""
    root = tempfile.mkdtemp(prefix="infosft-sandbox-")
    atexit.register(remove_tree, root)
    return root


def remove_tree(root: str) -> None:
    """Delete a directory a program wrote, without recursion or long paths (it may have
    nested thousands of directories, or made some unreadable): each pass moves the contents
    of subdirectories up to ``root`` and removes what is then empty."""
    progress = True
    while progress:
        progress = False
        with contextlib.suppress(OSError):
            for entry in list(os.scandir(root)):
                if not entry.is_dir(follow_symlinks=False):
                    os.unlink(entry.path)
                    progress = True
                    continue
                os.chmod(entry.path, 0o700)
                for child in list(os.scandir(entry.path)):
                    os.rename(child.path, os.path.join(root, f"{time.monotonic_ns()}-{id(child)}"))
                os.rmdir(entry.path)
                progress = True
    with contextlib.suppress(OSError):
        os.rmdir(root)


def remove_later(path: str) -> None:
    """Delete a work directory in the background (thousands of entries take seconds on some
    disks); what is left at exit goes with ``private_root``."""
    threading.Thread(target=remove_tree, args=(path,), daemon=True).start()


def read_capped(proc: subprocess.Popen, deadline: float, max_bytes: int) -> tuple[bytes, str]:
    """The sandbox's output until EOF, the deadline or the cap; and which one ended it."""
    chunks, size = [], 0
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return b"".join(chunks), "deadline"
            if not sel.select(remaining):
                continue
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                return b"".join(chunks), "eof"
            chunks.append(chunk)
            size += len(chunk)
            if size > max_bytes:
                return b"".join(chunks)[:max_bytes], "cap"


def encode_program(program: object, max_bytes: int) -> tuple[bytes, str]:
    """``program`` as the UTF-8 bytes of its file and ``""``; or ``b""`` and why it cannot be a
    program file (the sample's fault, decided before anything starts): it is not a str, holds
    characters UTF-8 cannot encode (lone surrogates), or is larger than ``max_bytes``."""
    if not isinstance(program, str):
        return b"", f"the program is not text but {type(program).__name__}"
    too_large = f"the program is larger than the {max_bytes} bytes a file in the sandbox may hold"
    if len(program) > max_bytes:  # each character takes at least one byte
        return b"", too_large
    try:
        source = str.encode(program, "utf-8")  # str's own method, whatever a subclass defines
    except UnicodeEncodeError as error:
        where = f"{error.object[error.start]!a} at character {error.start}"
        return b"", f"the program cannot be encoded as UTF-8: {where}"
    if len(source) > max_bytes:
        return b"", too_large
    return source, ""


def send_input(proc: subprocess.Popen, config: dict, source: bytes) -> None:
    """Write the configuration and the program to the supervisor's stdin (a thread: they may
    exceed a pipe). The program travels as raw bytes after the JSON, so that nothing in it
    can change how the supervisor reads its configuration."""
    body = json.dumps(config).encode()

    def write() -> None:
        with contextlib.suppress(OSError):
            proc.stdin.write(b"%d %d\n" % (len(body), len(source)) + body)
            proc.stdin.write(source)
        with contextlib.suppress(OSError):
            proc.stdin.close()

    threading.Thread(target=write, daemon=True).start()


def run_python(
    program: str,
    *,
    timeout: float = DEFAULT_TIMEOUT_S,
    memory_bytes: int = DEFAULT_MEMORY_BYTES,
    max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES,
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
    max_disk_bytes: int = DEFAULT_MAX_DISK_BYTES,
    max_files: int = DEFAULT_MAX_FILES,
    mode: str = "auto",
) -> SandboxResult:
    """Run the Python source ``program`` in a fresh sandbox and report how it ended.

    A program that cannot be written as a source file is ``"rejected"`` before anything
    starts; ``"error"`` only ever means that the sandbox itself failed.

    Args:
        program: source code, run as ``__main__`` from ``program.py`` in its own directory;
            at most ``min(max_file_bytes, max_disk_bytes)`` bytes of UTF-8.
        timeout: wall-clock seconds before the program is killed (finite, > 0).
        memory_bytes: address-space limit of the program (RLIMIT_AS).
        max_output_bytes: stdout + stderr kept; a program printing more is killed.
        max_file_bytes: largest file it may write (RLIMIT_FSIZE).
        max_disk_bytes, max_files: what its directory may hold (bwrap: the tmpfs size).
        mode: "auto", "bwrap" or "landlock" (see the module docstring).
    """
    timeout = validate_timeout(timeout)
    concrete = resolve_mode(mode)
    source, rejection = encode_program(program, min(max_file_bytes, max_disk_bytes))
    if rejection:
        return SandboxResult("rejected", None, "", 0.0, concrete, rejection)
    start = time.monotonic()
    with contextlib.ExitStack() as stack:
        try:  # until the supervisor runs, every failure is the sandbox's: no content is used
            if concrete == "bwrap":
                work, cwd, prefix = SANDBOX_HOME, "/", bwrap_command(max_disk_bytes)
            else:
                work = cwd = tempfile.mkdtemp(dir=private_root())
                stack.callback(remove_later, work)
                prefix = []
            report_r, report_w = os.pipe()
            stack.callback(os.close, report_r)
            try:
                proc = subprocess.Popen(
                    [*prefix, sys.executable, "-I", "-B", "-S", "-c", SUPERVISOR_SOURCE],
                    cwd=cwd,
                    env=scrubbed_env(work),
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    pass_fds=(report_w,),
                    start_new_session=True,
                )
            finally:
                os.close(report_w)
        except OSError as error:  # bwrap missing, no fork or exec, no file descriptors or disk
            detail = f"the sandbox could not be started: {error}"
            return SandboxResult("error", None, "", 0.0, concrete, detail)
        config = {
            "program_path": os.path.join(work, "program.py"),
            "mode": concrete,
            "work": work,
            "timeout": timeout,
            "python": sys.executable,
            "site": site_dirs(),
            "read_paths": readable_paths(),
            "report_fd": report_w,
            "limits": {
                "RLIMIT_AS": memory_bytes,
                "RLIMIT_CPU": math.ceil(timeout) + 1,
                "RLIMIT_FSIZE": max_file_bytes,
                "RLIMIT_NOFILE": MAX_OPEN_FILES,
                "RLIMIT_CORE": 0,
                "RLIMIT_RTPRIO": 0,
            },
            "disk": {"max_bytes": max_disk_bytes, "max_files": max_files, "tmpfs": prefix != []},
        }
        send_input(proc, config, source)
        deadline = start + SETUP_S + timeout + GRACE_S
        try:
            output, ended_by = read_capped(proc, deadline, max_output_bytes)
            if ended_by == "eof":
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            ended_by = "deadline"
        finally:
            # Whatever happened, nothing of the sample may keep running.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.stdout.close()
            returncode = proc.wait()
        verdict = read_report(report_r)
    seconds = time.monotonic() - start
    text = output.decode("utf-8", errors="replace")
    if ended_by == "cap":
        detail = f"printed more than {max_output_bytes} bytes"
        return SandboxResult("output_limit", None, text, seconds, concrete, detail)
    if verdict is not None:
        status, code, detail = verdict["status"], verdict["returncode"], verdict["detail"]
        return SandboxResult(status, code, text, seconds, concrete, detail)
    if ended_by == "deadline":
        detail = f"the sandbox did not finish within {deadline - start:.0f} s"
    else:
        detail = f"the sandbox ended without a verdict (exit status {returncode})"
    return SandboxResult("error", None, text, seconds, concrete, detail)


def read_report(fd: int) -> dict | None:
    """The supervisor's verdict line, or None when it wrote none (it never started, or died)."""
    os.set_blocking(fd, False)
    data = b""
    with contextlib.suppress(BlockingIOError):
        while chunk := os.read(fd, 4096):
            data += chunk
    try:
        verdict = json.loads(data)
    except ValueError:
        return None
    return verdict if isinstance(verdict, dict) and "status" in verdict else None


def describe(result: SandboxResult) -> str:
    """One line about a sandbox result: status, detail and the end of its output."""
    tail = " ".join(result.output.strip().splitlines()[-3:])[-300:]
    return f"{result.status} ({result.detail or 'no detail'})" + (f": {tail}" if tail else "")


def check_sandbox(mode: str = "auto", timeout: float = DEFAULT_TIMEOUT_S) -> str:
    """Run a known-good and a known-bad program; return the concrete mode, or raise SandboxError
    when the sandbox cannot tell them apart (it cannot start Python, the timeout is too short)."""
    concrete = resolve_mode(mode)
    good = run_python(KNOWN_GOOD, timeout=timeout, mode=concrete)
    if good.status == "timeout":
        raise SandboxError(
            f"a known-good program did not finish within the timeout ({timeout:g} s) in the "
            f"{concrete} sandbox: raise the timeout"
        )
    if not (good.passed and "sandbox ok" in good.output):
        raise SandboxError(
            f"the {concrete} sandbox cannot run Python here: a known-good program ended "
            f"{describe(good)}"
        )
    bad = run_python(KNOWN_BAD, timeout=timeout, mode=concrete)
    if not (bad.status == "failed" and "AssertionError" in bad.output):
        raise SandboxError(
            f"the {concrete} sandbox does not report failures: a known-bad program ended "
            f"{describe(bad)}"
        )
    return concrete


@functools.cache
def probe(mode: str) -> str | None:
    """None when ``mode`` runs a known-good program here, else why not (cached)."""
    result = run_python(KNOWN_GOOD, timeout=SETUP_S, mode=mode)
    return None if result.passed else describe(result)


def resolve_mode(mode: str) -> str:
    """The concrete mode for ``mode``: "auto" picks bwrap when it works here, else landlock."""
    if mode not in MODES:
        raise ValueError(f"sandbox mode must be one of {MODES}, got {mode!r}")
    if mode != "auto":
        return mode
    problems = {}
    for candidate in ("bwrap", "landlock"):
        problems[candidate] = probe(candidate)
        if problems[candidate] is None:
            return candidate
    raise SandboxError(
        "no sandbox can run Python here, and model-written code is never run unconfined. "
        f"bwrap: {problems['bwrap']}; landlock: {problems['landlock']}. Install bubblewrap "
        "(apt-get install bubblewrap) where user namespaces are allowed, or use Linux 6.2+ "
        "with Landlock enabled."
    )
