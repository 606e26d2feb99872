"""infosft.files: the one atomic writer, JSON-lines appender, YAML 1.2 reader, environment."""

import hashlib
import json
import math
import os

import numpy as np
import pytest

from infosft import files


def test_json_writes_non_finite_numbers_as_null_and_leaves_no_temporary_file(tmp_path):
    content = {"nan": float("nan"), "inf": [float("inf"), -math.inf], "f32": np.float32("nan")}
    path = files.write_json_atomic(tmp_path / "sub" / "r.json", {**content, "ok": (1.5, 2)})
    assert json.loads(path.read_text()) == {
        "nan": None,
        "inf": [None, None],
        "f32": None,
        "ok": [1.5, 2],
    }
    assert [p.name for p in path.parent.iterdir()] == ["r.json"]


def test_a_failed_write_keeps_the_previous_file(tmp_path):
    path = files.write_json_atomic(tmp_path / "r.json", {"a": 1})

    class Unprintable:
        def __str__(self):
            raise RuntimeError("cannot encode")

    with pytest.raises(RuntimeError):
        files.write_json_atomic(path, {"a": Unprintable()})
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_jsonl_lines_are_appended_as_standard_json(tmp_path):
    path = tmp_path / "m.jsonl"
    files.append_jsonl(path, {"step": 1, "loss": float("nan")})
    files.append_jsonl(path, {"step": 2, "loss": 0.5})
    lines = path.read_text().splitlines()
    assert [json.loads(line) for line in lines] == [
        {"step": 1, "loss": None},
        {"step": 2, "loss": 0.5},
    ]


def test_yaml_is_read_as_yaml_1_2():
    values = files.load_yaml("a: no\nb: on\nc: 1e-5\nd: true\ne: 2\n")
    assert values == {"a": "no", "b": "on", "c": 1e-5, "d": True, "e": 2}


def test_yaml_syntax_errors_name_the_file_and_line(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("a: 1\nb: [1, 2\nc: 3\n")
    with pytest.raises(ValueError, match=r"c\.yaml:\d+: not valid YAML"):
        files.read_yaml(path)


def test_text_that_is_not_utf8_names_the_file_and_line(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_bytes(b"a: 1\nb: 2\nc: caf\xe9\n")
    with pytest.raises(ValueError, match=r"c\.yaml:3: not UTF-8"):
        files.read_yaml(path)


def test_a_missing_yaml_file_is_a_file_not_found_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        files.read_yaml(tmp_path / "nope.yaml")


def test_environment_names_python_torch_and_the_libraries():
    env = files.environment()
    assert {"python", "platform", "torch_threads", "cuda", "versions"} <= set(env)
    assert env["torch_threads"] >= 1
    assert set(files.RECORDED_LIBRARIES) == set(env["versions"])


def test_a_key_given_twice_is_an_error_naming_its_line():
    with pytest.raises(ValueError, match=r"c\.yaml:3: not valid YAML: duplicate key 'a'"):
        files.load_yaml("a: 1\nb: 2\na: 3\n", "c.yaml")


def test_merge_keys_bring_in_an_anchored_mapping_that_own_keys_override():
    text = "common: &c {lr: 1, steps: 2}\nrun:\n  <<: *c\n  steps: 5\n"
    assert files.load_yaml(text)["run"] == {"lr": 1, "steps": 5}


def test_a_key_given_twice_beside_a_merge_is_still_an_error():
    text = "common: &c {lr: 1}\nrun:\n  <<: *c\n  steps: 2\n  steps: 3\n"
    with pytest.raises(ValueError, match=r"c\.yaml:5: not valid YAML: duplicate key 'steps'"):
        files.load_yaml(text, "c.yaml")


def test_yaml_nested_too_deeply_to_read_is_a_value_error_naming_the_source():
    with pytest.raises(ValueError, match=r"c\.yaml: YAML nested too deeply"):
        files.load_yaml("a: " + "[" * 5000 + "]" * 5000, "c.yaml")


def test_files_digest_reads_content_not_names_or_dates(tmp_path):
    first, second = tmp_path / "a.bin", tmp_path / "copy" / "b.bin"
    second.parent.mkdir()
    first.write_bytes(b"x" * 100)
    second.write_bytes(b"x" * 100)
    os.utime(second, (0, 0))
    assert files.files_digest([first]) == files.files_digest([second])
    assert files.files_digest([first]) == hashlib.sha256(b"x" * 100).hexdigest()[:16]
    second.write_bytes(b"x" * 99 + b"y")
    assert files.files_digest([first]) != files.files_digest([second])


def test_a_file_over_whole_up_to_is_known_by_its_size_and_evenly_spaced_chunks(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(files, "CHUNK_BYTES", 4)
    monkeypatch.setattr(files, "SAMPLED_CHUNKS", 3)
    data = bytes(range(40))
    path = tmp_path / "weights.bin"
    path.write_bytes(data)
    # Chunks start at 0, 18 and 36: first and last bytes always read, the rest evenly between.
    sampled = b"40" + data[0:4] + data[18:22] + data[36:40]
    assert files.files_digest([path], 39) == hashlib.sha256(sampled).hexdigest()[:16]
    assert files.files_digest([path], 40) == hashlib.sha256(data).hexdigest()[:16]
