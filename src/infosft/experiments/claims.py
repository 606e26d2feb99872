"""Claims: how several jobs share one grid's output directory and do no part of it twice.

Several independent jobs (a SLURM array, machines sharing a filesystem, several processes on one
machine) may run the same grid into the same output directory. Before a job trains a cell,
measures the base model or writes the report, it claims that piece of work:
``claims/<name>.json`` holds the job id, host, pid, start time and a random token. Other jobs
skip a claimed cell (or wait for a claimed base or report) while the claim is alive, and take it
over once it is stale. The finished result file (``cells/<cell>.json``, ``base.json``) is the
record that the work is done: a job looks for it again after winning a claim, and releases the
claim (deletes it) once it has written its result.

How, and what it assumes of the filesystem:

- **create**: the claim is written in full to a temporary file, which is then hard-linked to
  its name. ``link(2)`` fails when the name exists, so exactly one contender creates the claim,
  and the claim is complete the moment it appears. This is the classic lock that is safe on NFS
  (it needs no ``O_EXCL`` support from the server; NFSv3 and later with Linux clients since
  2.6.5 also honour ``O_EXCL``, used here for takeover markers); local filesystems, Lustre,
  GPFS and BeeGFS are fine too. Object-store mounts (s3fs, gcsfuse), whose rename is a copy and
  delete and whose link is missing, are not.
- **heartbeat**: while the holder works, a thread sets the claim's mtime to "now" every
  ``heartbeat`` seconds through an open descriptor of the claim (so it never refreshes a claim
  that replaced its own). With no explicit time, the NFS client asks the server to use its own
  clock.
- **stale**: a claim is stale when its mtime is more than ``stale_after`` seconds behind the
  filesystem's "now" (the mtime of ``claims/.clock`` just touched by the looking job), so the
  jobs' clocks need not agree; only the file server's clock counts. ``stale_after`` must exceed
  the heartbeat period plus how late another host may see an mtime (the NFS attribute cache
  holds attributes up to ``acdirmax``/``acregmax``, 60 s by default): the default, 600 s
  against a 30 s heartbeat, leaves a wide margin; a killed job's cell waits that long before
  another job takes it.
- **a dead holder on this machine**: a claim also records the process-id space of its job
  (the Linux boot id and pid namespace); a claim from this same space whose pid no longer
  exists is taken over at once, without waiting ``stale_after`` (a job restarted after an
  out-of-memory kill resumes at once). A pid reused by another process only makes the claim
  look alive, so the timeout still applies.
- **takeover**: a job that finds a stale claim creates ``claims/<name>.<token>.taken`` (the
  stale claim's token) with ``O_EXCL``; only one contender creates it, and the winner renames
  its own claim over the stale one (``rename(2)`` is atomic). A contender that read the stale
  claim before another took it over finds the marker and backs off, so a fresh claim is never
  taken. Markers are kept (a few bytes each) so that this holds however late a contender is.
- **a holder that was only frozen** (suspended, or cut off from the filesystem for longer than
  ``stale_after``) has lost its claim: it checks that it still holds the claim before writing
  its result and discards its work if not, so each result is written once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import os
import secrets
import socket
import tempfile
import threading
from pathlib import Path
from typing import Any

from infosft.files import read_json, to_json

STALE_AFTER_SECONDS = 600.0
# Heartbeats per stale_after: a claim goes stale only after this many missed heartbeats.
HEARTBEATS_PER_TIMEOUT = 20
CLOCK_FILE = ".clock"


def process_space() -> str | None:
    """Where this job's pid is meaningful: the boot and the pid namespace (Linux); None where
    unknown."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text(encoding="utf-8").strip()
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return None
    return f"{boot}/{namespace}"


def default_job_id() -> str:
    """``<host>-<pid>``: unique among the jobs running at one time."""
    return f"{socket.gethostname()}-{os.getpid()}"


class Claim:
    """A claim this job holds: refreshed by a heartbeat thread until :meth:`release`."""

    def __init__(self, path: Path, descriptor: int, heartbeat: float):
        self.path = path
        self._descriptor = descriptor
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._beat, args=(heartbeat,), name=f"claim {path.name}", daemon=True
        )
        self._thread.start()

    def _beat(self, heartbeat: float) -> None:
        while not self._stop.wait(heartbeat):
            # A brief filesystem outage: the next beat tries again; a long one makes the claim
            # stale, which held() then reports.
            with contextlib.suppress(OSError):
                os.utime(self._descriptor)

    def held(self) -> bool:
        """Whether the claim file is still this job's (not taken over as stale)."""
        try:
            mine, there = os.fstat(self._descriptor), os.stat(self.path)
        except OSError:
            return False
        return (mine.st_dev, mine.st_ino) == (there.st_dev, there.st_ino)

    def release(self) -> None:
        """Stop the heartbeat and delete the claim if it is still this job's."""
        self._stop.set()
        self._thread.join()
        if self.held():
            self.path.unlink(missing_ok=True)
        os.close(self._descriptor)

    def __enter__(self) -> Claim:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


@dataclasses.dataclass(frozen=True)
class Claims:
    """Where claims live (``directory``), who makes them (``job``) and when one is stale."""

    directory: Path
    job: str
    stale_after: float = STALE_AFTER_SECONDS

    @property
    def heartbeat(self) -> float:
        """Seconds between heartbeats; also how often a waiting job looks again."""
        return self.stale_after / HEARTBEATS_PER_TIMEOUT

    def path(self, name: str) -> Path:
        return self.directory / f"{name}.json"

    def holder(self, name: str) -> dict[str, Any]:
        """The content of the claim on ``name`` (empty when there is none, or it just went)."""
        return read_json(self.path(name)) or {}

    def now(self) -> float:
        """The filesystem's current time: the mtime of a file just touched here."""
        clock = self.directory / CLOCK_FILE
        clock.touch()
        return clock.stat().st_mtime

    def take(self, name: str) -> Claim | None:
        """Claim ``name``: a new claim, or a stale one taken over. None when another job holds
        it (a fresh claim) or won the takeover."""
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.path(name)
        if self._look(name)[1]:
            return None  # the common case while jobs wait: no temporary file to write
        content = {
            "job": self.job,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "process_space": process_space(),
            "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "token": secrets.token_hex(8),
        }
        descriptor, temporary = tempfile.mkstemp(
            prefix=f".{name}-", suffix=".tmp", dir=self.directory
        )
        try:
            os.write(descriptor, (to_json(content) + "\n").encode("utf-8"))
            os.fsync(descriptor)
            try:
                os.link(temporary, path)
            except FileExistsError:
                if not self._take_over(name, temporary):
                    os.close(descriptor)
                    return None
        except BaseException:
            os.close(descriptor)
            raise
        finally:
            Path(temporary).unlink(missing_ok=True)
        return Claim(path, descriptor, self.heartbeat)

    def _look(self, name: str) -> tuple[dict[str, Any], bool | None]:
        """The claim on ``name`` and whether it is fresh (None when there is no claim)."""
        # Content first: if the claim is replaced between the two looks, the mtime is the new
        # claim's (fresh), never a stale mtime paired with a fresh claim's token.
        content = self.holder(name)
        try:
            age = self.now() - os.stat(self.path(name)).st_mtime
        except FileNotFoundError:
            return content, None
        return content, age <= self.stale_after and not _dead(content)

    def _take_over(self, name: str, temporary: str) -> bool:
        """Rename ``temporary`` over the claim on ``name`` if that claim is stale and this job
        is the one contender that creates its takeover marker."""
        stale, fresh = self._look(name)
        # fresh is None when the claim was released meanwhile: the next look claims it afresh.
        if fresh is not False or "token" not in stale:
            return False
        marker = self.directory / f"{name}.{stale['token']}.taken"
        try:
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
        except FileExistsError:
            return False
        marker.write_text(to_json({"taken_by": self.job, "stale_claim": stale}) + "\n")
        os.replace(temporary, self.path(name))
        return True


def _dead(claim: dict[str, Any]) -> bool:
    """Whether a claim's job is known to be gone: a process of this process-id space that no
    longer exists."""
    space, pid = process_space(), claim.get("pid")
    if space is None or claim.get("process_space") != space or not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False  # another user's process: alive
    return False
