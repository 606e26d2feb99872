"""Files infosft writes and reads: atomic text and JSON, JSON lines, YAML 1.2, the environment.

Every result, config and log file of the project is written through this module, so they share
one policy:

- writes are atomic: a temporary file in the same directory, flushed to disk, then renamed over
  the target (a crash leaves the old file or the new one, never half of one);
- JSON is standard JSON: NaN and +-inf are written as ``null`` (``json.dumps`` would write the
  non-standard ``NaN``); objects JSON cannot encode (paths, dtypes) are written as ``str``;
- YAML is read as YAML 1.2 (``yes``/``no``/``on``/``off`` stay strings, ``1e-5`` is a float), and
  every read error names the file and line.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import numbers
import os
import re
import tempfile
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any

# Libraries whose versions a run records next to its results.
RECORDED_LIBRARIES = ("infosft", "torch", "transformers", "trl", "peft", "accelerate", "datasets")
# files_digest(..., whole_up_to=...): a larger file is known by its size and this many evenly
# spaced chunks of CHUNK_BYTES, so that a 100 GB checkpoint is identified in well under a second.
SAMPLED_CHUNKS = 256
CHUNK_BYTES = 1024**2


def finite(value: Any) -> Any:
    """``value`` with every non-finite float (NaN, +-inf) replaced by None, tuples as lists."""
    if value is None or isinstance(value, (str, int)):  # bool is an int
        return value
    if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral):
        # numbers.Real also covers numpy's float32/float64 scalars.
        number = float(value)
        return number if math.isfinite(number) else None
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(item) for item in value]
    return value


def to_json(value: Any, indent: int | None = 2) -> str:
    """``value`` as standard JSON text (non-finite floats as null, other objects as str)."""
    return json.dumps(finite(value), indent=indent, default=str, allow_nan=False)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; creates the parent directory. Returns it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        # mkstemp creates the file readable by its owner only; give it the usual permissions.
        os.chmod(temporary, 0o666 & ~_umask())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def write_json_atomic(path: str | os.PathLike, content: Any) -> Path:
    """Write ``content`` as indented standard JSON to ``path`` atomically (NaN/inf as null)."""
    return write_text_atomic(path, to_json(content) + "\n")


def append_jsonl(path: str | os.PathLike, record: dict[str, Any]) -> None:
    """Append ``record`` as one JSON line (NaN/inf as null) and flush it to the file."""
    with Path(path).open("a", encoding="utf-8") as file:
        file.write(to_json(record, indent=None) + "\n")
        file.flush()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def existing_file(path: str | os.PathLike, what: str = "") -> Path:
    """``path`` as a Path if it is a file; FileNotFoundError naming it (as ``what``, how the
    user gave it: "task file", "--heldout") and what it is instead."""
    path = Path(path)
    if not path.is_file():
        state = "is a directory, not a file" if path.is_dir() else "does not exist"
        raise FileNotFoundError(f"{what} {path} {state}".lstrip())
    return path


def parse_json(text: str, where: str) -> Any:
    """The JSON value of ``text``; ValueError naming ``where`` (and the line) if it is not JSON,
    is nested too deeply for Python's parser or holds a number it cannot read."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        line = f":{err.lineno}" if "\n" in text.strip() else ""
        raise ValueError(f"{where}{line}: malformed JSON ({err.msg})") from None
    except RecursionError:
        raise ValueError(f"{where}: JSON nested too deeply to read") from None
    except ValueError as err:
        # Python refuses integers of more than 4300 digits (int_max_str_digits).
        raise ValueError(f"{where}: unreadable JSON number ({err})") from None


def json_lines(path: str | os.PathLike, what: str = "") -> list[tuple[int, Any]]:
    """``(line number, JSON value)`` of each non-blank line of a JSON Lines file; ValueError
    naming the file (as ``what``) and line of text that is not UTF-8 or not JSON."""
    where = f"{what} {path}".lstrip()
    lines = read_text(path).splitlines()
    return [
        (n, parse_json(line, f"{where}:{n}")) for n, line in enumerate(lines, 1) if line.strip()
    ]


def read_records(path: str | os.PathLike, what: str = "data file") -> tuple[list[dict], list[str]]:
    """The objects of a ``.json`` file (a list of them, or ``{"data": [...]}``) or of a JSON
    Lines file (one per line), and where each stands (``path:line`` or ``path example i``), for
    messages. FileNotFoundError or ValueError naming the file (as ``what``) and the place."""
    path = existing_file(path, what)
    if path.suffix.lower() == ".json":
        content = parse_json(read_text(path), str(path))
        if isinstance(content, dict) and isinstance(content.get("data"), list):
            content = content["data"]
        if not isinstance(content, list) or not all(isinstance(row, dict) for row in content):
            raise ValueError(
                f"{path}: a .json {what} must hold a list of objects (one per example); for one "
                "object per line use .jsonl"
            )
        return content, [f"{path} example {i}" for i in range(len(content))]
    rows, places = [], []
    for number, row in json_lines(path):
        if not isinstance(row, dict):
            raise ValueError(
                f"{path}:{number}: expected a JSON object per line, got {type(row).__name__}"
            )
        rows.append(row)
        places.append(f"{path}:{number}")
    return rows, places


def read_json(path: str | os.PathLike) -> dict[str, Any] | None:
    """The JSON object in ``path``; None when it is missing, unreadable or not an object."""
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def read_text(path: str | os.PathLike) -> str:
    """The UTF-8 text of ``path``; ValueError naming the file and line of a byte that is not
    UTF-8 (``str.decode`` only gives a byte offset)."""
    path = Path(path)
    raw = path.read_bytes()
    try:
        # utf-8-sig drops the byte-order mark some Windows editors write first.
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise ValueError(
            f"{path}:{line}: not UTF-8 text (byte 0x{raw[err.start]:02x}); save the file as UTF-8"
        ) from None


def load_yaml(text: str, source: str = "<string>") -> Any:
    """Parse YAML 1.2 text; ValueError naming ``source`` and the line of a syntax error.

    PyYAML follows YAML 1.1, which reads yes/no/on/off as booleans (``save_strategy: no`` would
    become False) and ``1e-5`` as a string (a float needs a dot there), and keeps the last of
    two equal keys; this loader does not.
    """
    import yaml

    try:
        return yaml.load(text, Loader=_yaml_1_2_loader())
    except yaml.MarkedYAMLError as err:
        # The context mark is where the unfinished construct began (an unclosed bracket's
        # line); the problem mark can be the end of the file.
        mark = err.context_mark or err.problem_mark
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        problem = "; ".join(text for text in (err.context, err.problem) if text) or "syntax error"
        raise ValueError(f"{where}: not valid YAML: {problem}") from None
    except yaml.YAMLError as err:
        raise ValueError(f"{source}: not valid YAML: {err}") from None
    except RecursionError:
        raise ValueError(f"{source}: YAML nested too deeply to read") from None


def read_yaml(path: str | os.PathLike) -> Any:
    """The YAML 1.2 document in the file ``path`` (see :func:`load_yaml`).

    Raises FileNotFoundError when there is no such file, ValueError (file and line) for text
    that is not UTF-8 or not YAML.
    """
    path = existing_file(path)
    return load_yaml(read_text(path), str(path))


@functools.cache
def _yaml_1_2_loader() -> Any:
    """yaml.SafeLoader with YAML 1.2's booleans (true/false only), exponent floats and unique
    keys (merge keys ``<<`` allowed)."""
    import yaml

    class Loader(yaml.SafeLoader):
        def construct_mapping(self, node: Any, deep: bool = False) -> dict[Any, Any]:
            # YAML requires unique keys; PyYAML would keep the last value without a word. Keys
            # a merge (<<: *anchor) brings in are not duplicates: the mapping's own keys
            # override them, as YAML's merge key specifies.
            seen = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=deep)
                if not isinstance(key, Hashable):
                    continue  # the base class reports an unhashable key itself
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r}", key_node.start_mark
                    )
                seen.add(key)
            return super().construct_mapping(node, deep=deep)

    bool_tag = "tag:yaml.org,2002:bool"
    Loader.yaml_implicit_resolvers = {
        first: [(tag, regexp) for tag, regexp in resolvers if tag != bool_tag]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    Loader.add_implicit_resolver(
        bool_tag, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
    )
    Loader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"^[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+$"),
        list("-+0123456789"),
    )
    return Loader


def library_versions(names: tuple[str, ...] = RECORDED_LIBRARIES) -> dict[str, str]:
    """Installed version of each distribution in ``names`` ("not installed" where missing)."""
    import importlib.metadata

    versions = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def environment() -> dict[str, Any]:
    """Where a run happened: Python, platform, library versions, torch threads, CUDA device."""
    import platform

    import torch

    cuda = torch.cuda.is_available()
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch_threads": torch.get_num_threads(),
        "cuda": cuda,
        "cuda_device": torch.cuda.get_device_name(0) if cuda else None,
        "versions": library_versions(),
    }


def file_name_part(text: str, fallback: str) -> str:
    """``text`` as part of one file name: runs of characters other than ASCII letters, digits
    and ``._-`` become ``-`` (no ``/``, NUL or ``..`` path step survives), no leading dot, at
    most 100 characters; ``fallback`` when nothing is left."""
    part = re.sub(r"[^A-Za-z0-9._-]+", "-", text).lstrip(".-").rstrip("-")
    return part[:100] or fallback


def check_results_file(
    output: Path, identity: dict[str, Any], overwrite: bool, where: str = "--output"
) -> None:
    """Before any work: ``output`` (given as ``where``) must be a writable file path, and must
    not hold results whose ``identity`` keys differ (another task, model or samples file),
    unless ``overwrite``."""
    if output.is_dir():
        raise ValueError(
            f"{where} {output} is a directory; give a file such as {output}/results.json"
        )
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=output.parent, prefix=f".{output.name}."):
            pass
    except OSError as err:
        raise ValueError(f"cannot write {where} {output}: {err}") from None
    if not output.exists() or overwrite:
        return
    try:
        previous = json.loads(output.read_bytes())
        same = all(previous.get(key) == value for key, value in identity.items())
    except (ValueError, AttributeError):
        same = False
    if not same:
        raise ValueError(
            f"{where} {output} already holds other results (not {identity}); choose another "
            f"{where}, or pass --overwrite to replace them"
        )


def files_digest(paths: Sequence[str | os.PathLike], whole_up_to: int | None = None) -> str:
    """Hash of the content of files (every file under a directory, with its relative name), in
    order: 16 hex digits of sha256.

    With ``whole_up_to``, a file of more bytes is read in part: its size and
    :data:`SAMPLED_CHUNKS` chunks spread evenly over it. Identical files on two machines hash
    alike (unlike names, sizes and dates, which a copy or a fresh download changes).
    """
    digest = hashlib.sha256()
    for path in map(Path, paths):
        members = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for member in members:
            digest.update(str(member.relative_to(path) if path.is_dir() else "").encode())
            size = member.stat().st_size
            with member.open("rb") as handle:
                if whole_up_to is None or size <= whole_up_to:
                    while block := handle.read(CHUNK_BYTES):
                        digest.update(block)
                    continue
                digest.update(str(size).encode())
                for i in range(SAMPLED_CHUNKS):
                    handle.seek((size - CHUNK_BYTES) * i // (SAMPLED_CHUNKS - 1))
                    digest.update(handle.read(CHUNK_BYTES))
    return digest.hexdigest()[:16]
