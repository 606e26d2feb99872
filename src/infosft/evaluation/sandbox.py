"""Run model-written Python outside the evaluator's process, isolated as far as the machine allows.

Two modes, chosen by ``mode``:

- ``"bwrap"``: bubblewrap puts the program in new user, pid, network, ipc, uts and cgroup
  namespaces with every capability dropped, a read-only view of ``/``, a private ``/tmp``, the
  user's home directory hidden, and only the sample's own temporary directory writable.
- ``"rlimit"`` (fallback when bubblewrap is missing or cannot create namespaces): the same
  supervisor, limits, scrubbed environment and process cleanup, plus an audit hook in the
  program's interpreter that refuses writes outside its directory and any socket use. It is a
  guard against accidents, not against a program that tries to escape (see docs/sandbox.md).

In both modes a trusted supervisor script (``_supervisor.py``) forks the program, applies
the resource limits to it, enforces the wall-clock timeout and kills every process it left
behind; the evaluator reads at most ``max_output_bytes`` of its output and kills its whole
process group when it ends, times out or floods the output.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

SUPERVISOR = Path(__file__).with_name("_supervisor.py")
DEFAULT_TIMEOUT_S = 3.0
DEFAULT_MEMORY_BYTES = 2 * 1024**3
DEFAULT_MAX_OUTPUT_BYTES = 64 * 1024
DEFAULT_MAX_FILE_BYTES = 64 * 1024**2
DEFAULT_MAX_PROCESSES = 64
# Extra wall-clock time the evaluator grants the supervisor before killing it from outside.
GRACE_S = 5.0
EXIT_TIMEOUT = 124
MODES = ("auto", "bwrap", "rlimit")
# New user/pid/net/ipc/uts/cgroup namespaces, no capabilities, no way to regain them.
ISOLATION_FLAGS = ["--unshare-all", "--unshare-user", "--disable-userns", "--cap-drop", "ALL"]


@dataclass(frozen=True)
class SandboxResult:
    """Outcome of one sandboxed program.

    ``status`` is ``"passed"`` (ran to its end), ``"failed"`` (raised or exited non-zero),
    ``"timeout"``, ``"output_limit"`` (printed more than allowed) or ``"killed"`` (a signal,
    e.g. the memory limit or a killed supervisor).
    """

    status: str
    returncode: int
    output: str
    seconds: float
    mode: str

    @property
    def passed(self) -> bool:
        return self.status == "passed"


@functools.lru_cache(maxsize=1)
def bwrap_available() -> bool:
    """True when ``bwrap`` exists and can create the namespaces we use (probed once)."""
    exe = shutil.which("bwrap")
    if exe is None:
        return False
    probe = [exe, "--ro-bind", "/", "/", *ISOLATION_FLAGS, "--", "true"]
    try:
        return subprocess.run(probe, capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def resolve_mode(mode: str) -> str:
    """The concrete mode for ``mode`` ("auto" picks bwrap when it works, else rlimit)."""
    if mode not in MODES:
        raise ValueError(f"sandbox mode must be one of {MODES}, got {mode!r}")
    if mode == "auto":
        if bwrap_available():
            return "bwrap"
        warnings.warn(
            "bubblewrap is not usable here; model-written code runs in the weaker rlimit "
            "sandbox (see docs/sandbox.md). Install bubblewrap for namespace isolation.",
            RuntimeWarning,
            stacklevel=3,
        )
        return "rlimit"
    if mode == "bwrap" and not bwrap_available():
        raise FileNotFoundError("sandbox mode 'bwrap' needs a working `bwrap` on PATH")
    return mode


def scrubbed_env(work_dir: str) -> dict[str, str]:
    """The whole environment of a sandboxed program: nothing of the evaluator's is passed on."""
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": work_dir,
        "TMPDIR": work_dir,
        "LANG": "C.UTF-8",
        "PYTHONHASHSEED": "0",
    }


def bwrap_command(work_dir: str, env: dict[str, str]) -> list[str]:
    """bubblewrap arguments: read-only root, private /tmp and home, writable ``work_dir`` only."""
    cmd = ["bwrap", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp"]
    home = os.path.expanduser("~")
    if home not in ("", "/") and os.path.isdir(home):
        # Hide the user's files (tokens, keys), then re-expose the interpreter if it lives there.
        cmd += ["--tmpfs", home]
        for prefix in dict.fromkeys([sys.base_prefix, sys.prefix, str(SUPERVISOR.parent)]):
            cmd += ["--ro-bind", prefix, prefix]
    cmd += ["--bind", work_dir, work_dir, "--chdir", work_dir]
    cmd += [*ISOLATION_FLAGS, "--die-with-parent", "--new-session", "--clearenv"]
    for key, value in env.items():
        cmd += ["--setenv", key, value]
    return [*cmd, "--"]


def rlimits(timeout: float, memory_bytes: int, max_file_bytes: int, max_processes: int) -> dict:
    """Resource limits of the program, by ``resource`` constant name."""
    limits = {
        "RLIMIT_AS": memory_bytes,
        "RLIMIT_CPU": math.ceil(timeout) + 1,
        "RLIMIT_FSIZE": max_file_bytes,
        "RLIMIT_CORE": 0,
    }
    if os.geteuid() != 0:
        # Counted over all the user's processes, so leave room for those already running;
        # the kernel ignores this limit for root (a namespace or the timeout bounds it there).
        limits["RLIMIT_NPROC"] = count_user_processes() + max_processes
    return limits


def count_user_processes() -> int:
    uid = os.getuid()
    count = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                count += os.stat(f"/proc/{entry}").st_uid == uid
            except OSError:
                continue
    return count


def read_capped(
    proc: subprocess.Popen, deadline: float, max_bytes: int
) -> tuple[bytes, bool, bool]:
    """Read the program's output until EOF, the deadline or the cap.

    Returns (output, hit_cap, hit_deadline).
    """
    chunks, size = [], 0
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return b"".join(chunks), False, True
            if not sel.select(remaining):
                continue
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                return b"".join(chunks), False, False
            chunks.append(chunk)
            size += len(chunk)
            if size > max_bytes:
                return b"".join(chunks)[:max_bytes], True, False


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the sandbox's process group (start_new_session made it equal to its pid)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def run_python(
    program: str,
    *,
    timeout: float = DEFAULT_TIMEOUT_S,
    memory_bytes: int = DEFAULT_MEMORY_BYTES,
    max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES,
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
    max_processes: int = DEFAULT_MAX_PROCESSES,
    mode: str = "auto",
) -> SandboxResult:
    """Run the Python source ``program`` in a fresh sandbox and report how it ended.

    Args:
        program: source code, run as ``__main__`` from ``program.py`` in a new temp directory.
        timeout: wall-clock seconds before the program and everything it spawned are killed.
        memory_bytes: address-space limit of the program (RLIMIT_AS).
        max_output_bytes: stdout + stderr kept; a program printing more is killed.
        max_file_bytes: largest file it may write (RLIMIT_FSIZE).
        max_processes: processes it may add (RLIMIT_NPROC; not enforced for root).
        mode: "auto", "bwrap" or "rlimit" (see the module docstring).
    """
    concrete = resolve_mode(mode)
    with tempfile.TemporaryDirectory(prefix="infosft-sandbox-") as work_dir:
        work_dir = os.path.realpath(work_dir)
        Path(work_dir, "program.py").write_text(program)
        config = {
            "program": os.path.join(work_dir, "program.py"),
            "timeout": timeout,
            "limits": rlimits(timeout, memory_bytes, max_file_bytes, max_processes),
            "guard_root": work_dir if concrete == "rlimit" else None,
        }
        env = scrubbed_env(work_dir)
        cmd = [sys.executable, "-I", "-B", str(SUPERVISOR), json.dumps(config)]
        if concrete == "bwrap":
            cmd = bwrap_command(work_dir, env) + cmd
        start = time.monotonic()
        proc = subprocess.Popen(
            cmd,
            cwd=work_dir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = start + timeout + GRACE_S
        try:
            output, hit_cap, hit_deadline = read_capped(proc, deadline, max_output_bytes)
            if not (hit_cap or hit_deadline):
                # EOF: the supervisor is exiting; let it report before the group is killed.
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            hit_deadline = True
        finally:
            # Whatever happened, nothing of the sample may keep running.
            kill_group(proc)
            proc.stdout.close()
            returncode = proc.wait()
        seconds = time.monotonic() - start
    if hit_cap:
        status = "output_limit"
    elif hit_deadline or returncode == EXIT_TIMEOUT:
        status = "timeout"
    elif returncode == 0:
        status = "passed"
    elif returncode < 0 or returncode > 128:
        status = "killed"
    else:
        status = "failed"
    text = output.decode("utf-8", errors="replace")
    return SandboxResult(status, returncode, text, seconds, concrete)
