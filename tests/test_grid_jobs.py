"""One grid, several jobs: claims on cells, the base and the report (infosft.experiments.claims),
and `infosft compare` jobs run as subprocesses that share one output directory."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from infosft.cli import main
from infosft.experiments.claims import Claims
from infosft.experiments.grid import read_grid
from test_compare import write_grid

WORKER = Path(__file__).with_name("grid_job.py")
GRID = {"methods": ["nll", "infosft"], "learning_rates": [1e-3, 1e-2], "seeds": [0]}
# Small, so that a killed job's cell is taken over within the test.
STALE_AFTER = 3.0
# What differs between two runs of the same cell: wall times and who ran it.
RUN_KEYS = {"train_seconds", "measure_seconds", "measure_seconds_by_part", "job"}
TRAINING_LINE = re.compile(r"^\[\d+/\d+\] (.+): training$", re.MULTILINE)


# --- the claim primitives ---------------------------------------------------------------------


def test_a_claim_held_by_another_job_is_not_taken(tmp_path):
    claim = Claims(tmp_path, "first").take("cell")
    assert claim is not None and claim.held()
    assert Claims(tmp_path, "second").take("cell") is None
    assert Claims(tmp_path, "second").holder("cell")["job"] == "first"
    claim.release()


def test_a_released_claim_is_gone_and_can_be_taken_again(tmp_path):
    Claims(tmp_path, "first").take("cell").release()
    assert not (tmp_path / "cell.json").exists()
    again = Claims(tmp_path, "second").take("cell")
    assert again is not None
    again.release()


def test_the_heartbeat_keeps_a_claim_fresh_past_its_stale_time(tmp_path):
    claims = Claims(tmp_path, "first", stale_after=0.5)
    with claims.take("cell") as claim:
        time.sleep(1.5)
        assert Claims(tmp_path, "second", stale_after=0.5).take("cell") is None
        assert claim.held()


@pytest.mark.parametrize("round_", range(5))
def test_a_stale_claim_is_taken_over_by_exactly_one_of_eight_contenders(tmp_path, round_):
    dead = Claims(tmp_path, "killed").take("cell")
    # A job killed an hour ago: its heartbeat (every 30 s here) never ran since.
    an_hour_ago = time.time() - 3600
    os.utime(tmp_path / "cell.json", (an_hour_ago, an_hour_ago))
    barrier = threading.Barrier(8)
    won = [None] * 8

    def contend(index):
        barrier.wait()
        won[index] = Claims(tmp_path, f"job{index}", stale_after=600).take("cell")

    threads = [threading.Thread(target=contend, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    winners = [claim for claim in won if claim is not None]
    assert len(winners) == 1
    assert not dead.held()
    assert Claims(tmp_path, "anyone").holder("cell")["job"] == f"job{won.index(winners[0])}"
    winners[0].release()
    dead.release()


def test_a_claim_taken_over_is_not_deleted_by_the_job_that_lost_it(tmp_path):
    dead = Claims(tmp_path, "frozen").take("cell")
    an_hour_ago = time.time() - 3600
    os.utime(tmp_path / "cell.json", (an_hour_ago, an_hour_ago))
    successor = Claims(tmp_path, "successor").take("cell")
    dead.release()
    assert successor.held()
    successor.release()


def test_a_claim_left_by_a_process_that_exited_on_this_machine_is_taken_over_at_once(tmp_path):
    # The process ends without releasing its claim, as a killed job would.
    code = (
        "from pathlib import Path; from infosft.experiments.claims import Claims; "
        f"Claims(Path({str(tmp_path)!r}), 'gone').take('cell')"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    assert Claims(tmp_path, "anyone").holder("cell")["job"] == "gone"
    successor = Claims(tmp_path, "successor", stale_after=600).take("cell")
    assert successor is not None
    successor.release()


def test_a_claim_of_a_live_process_is_not_taken_before_it_is_stale(tmp_path):
    # This process is alive: only its heartbeat's age counts.
    live = Claims(tmp_path, "live").take("cell")
    assert Claims(tmp_path, "other", stale_after=600).take("cell") is None
    live.release()


# --- jobs sharing a grid ----------------------------------------------------------------------


def start_job(config, out, job_id, cell_sleep, stale_after):
    """`infosft compare` as a subprocess; its stdout and stderr go to <job_id>.out/.log."""
    env = {**os.environ, "GRID_JOB_CELL_SLEEP": str(cell_sleep), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(WORKER), "compare", "--config", str(config)]
    command += ["--output-dir", str(out), "--job-id", job_id, "--stale-after", str(stale_after)]
    with (
        open(out.parent / f"{job_id}.out", "w") as stdout,
        open(out.parent / f"{job_id}.log", "w") as stderr,
    ):
        return subprocess.Popen(command, stdout=stdout, stderr=stderr, env=env)


def finish(job, timeout=600):
    assert job.wait(timeout=timeout) == 0


def trained(directory, job_id):
    """The cells (described) that a job started training, from its progress lines."""
    return TRAINING_LINE.findall((directory / f"{job_id}.log").read_text())


@pytest.fixture(scope="module")
def two_jobs(tmp_path_factory, tiny_model_dir):
    """Two jobs started together on one 4-cell grid and one output directory; each cell sleeps
    2 s first, so that both find cells to train."""
    tmp = tmp_path_factory.mktemp("two-jobs")
    config = write_grid(tmp, tiny_model_dir, grid=GRID)
    jobs = [start_job(config, tmp / "out", job_id, 2, 60) for job_id in ("a", "b")]
    for job in jobs:
        finish(job)
    return tmp, read_grid(config)


@pytest.fixture(scope="module")
def killed_and_restarted(tmp_path_factory, tiny_model_dir):
    """Job k killed (SIGKILL) while it trains the first cell, then job r started alone."""
    tmp = tmp_path_factory.mktemp("killed")
    config = write_grid(tmp, tiny_model_dir, grid=GRID)
    spec = read_grid(config)
    killed = start_job(config, tmp / "out", "k", 600, STALE_AFTER)
    claim = tmp / "out" / "claims" / f"{spec.cells()[0].name}.json"
    deadline = time.monotonic() + 300
    while not claim.exists() and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert claim.exists(), (tmp / "k.log").read_text()
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    finish(start_job(config, tmp / "out", "r", 0, STALE_AFTER))
    return tmp, spec


def summary(stdout):
    """A job's printed summary, without timestamped library warnings."""
    lines = stdout.read_text().splitlines()
    return [line for line in lines if not re.match(r"\[\d{4}-\d\d-\d\d ", line)]


def numbers(record):
    """A record without its wall times and job."""
    return {key: value for key, value in record.items() if key not in RUN_KEYS}


def cell_files(out):
    return {p.stem: json.loads(p.read_text()) for p in (out / "cells").glob("*.json")}


def test_two_jobs_split_the_cells_and_train_each_exactly_once(two_jobs):
    tmp, spec = two_jobs
    by_a, by_b = trained(tmp, "a"), trained(tmp, "b")
    assert by_a and by_b
    assert sorted(by_a + by_b) == sorted(cell.describe() for cell in spec.cells())
    files = cell_files(tmp / "out")
    assert sorted(files) == sorted(cell.name for cell in spec.cells())
    for cell in spec.cells():
        assert files[cell.name]["job"] == ("a" if cell.describe() in by_a else "b")


def test_two_jobs_measure_the_base_once_and_write_the_report_once(two_jobs):
    tmp, _ = two_jobs
    logs = [(tmp / f"{job_id}.log").read_text() for job_id in ("a", "b")]
    assert sum("measuring the base model" in log for log in logs) == 1
    assert sum("writing results.json and the report" in log for log in logs) == 1
    # The other job prints the same summary, read from the results the writer left.
    assert summary(tmp / "a.out") == summary(tmp / "b.out")


def test_a_job_killed_mid_cell_leaves_it_to_a_restarted_job_and_every_cell_is_made_once(
    killed_and_restarted,
):
    tmp, spec = killed_and_restarted
    first = spec.cells()[0]
    assert trained(tmp, "k") == [first.describe()]
    assert sorted(trained(tmp, "r")) == sorted(cell.describe() for cell in spec.cells())
    files = cell_files(tmp / "out")
    assert sorted(files) == sorted(cell.name for cell in spec.cells())
    assert {record["job"] for record in files.values()} == {"r"}
    (marker,) = (tmp / "out" / "claims").glob(f"{first.name}.*.taken")
    taken = json.loads(marker.read_text())
    assert (taken["taken_by"], taken["stale_claim"]["job"]) == ("r", "k")
    # Every claim was released once its work was written.
    assert not list((tmp / "out" / "claims").glob("*.json"))


def test_jobs_sharing_a_grid_give_the_results_and_report_of_one_job(two_jobs, killed_and_restarted):
    # The restarted job r trained every cell alone: the results of one job.
    shared = json.loads((two_jobs[0] / "out" / "results.json").read_text())
    alone = json.loads((killed_and_restarted[0] / "out" / "results.json").read_text())
    assert shared["missing_cells"] == alone["missing_cells"] == []
    assert numbers(shared["base"]) == numbers(alone["base"])
    assert [numbers(cell) for cell in shared["cells"]] == [numbers(c) for c in alone["cells"]]
    assert shared["fronts"] == alone["fronts"]

    def sections(report):
        # All but wall times and the run configuration (whose paths differ here).
        text = report.read_text()
        verdicts = text[text.index("## Verdicts") : text.index("## Every setting")]
        return verdicts, text[text.index("## What is measured") : text.index("## Run config")]

    assert sections(two_jobs[0] / "out" / "report.md") == sections(
        killed_and_restarted[0] / "out" / "report.md"
    )


def test_report_only_reports_the_finished_cells_and_how_many_are_missing(
    killed_and_restarted, tmp_path, monkeypatch, capsys
):
    tmp, spec = killed_and_restarted
    out = tmp_path / "out"
    shutil.copytree(tmp / "out", out)
    for cell in spec.cells()[:2]:
        (out / "cells" / f"{cell.name}.json").unlink()
    monkeypatch.setattr("infosft.models.load_model_and_tokenizer", lambda *a, **k: 1 / 0)
    config = tmp / "grid.yaml"
    assert (
        main(["compare", "--config", str(config), "--output-dir", str(out), "--report-only"]) == 0
    )
    results = json.loads((out / "results.json").read_text())
    assert results["missing_cells"] == [cell.name for cell in spec.cells()[:2]]
    assert len(results["cells"]) == 2
    assert "**Incomplete: 2 of 4 cells are missing**" in (out / "report.md").read_text()


def test_report_only_before_the_base_is_measured_is_one_clear_error(
    tmp_path, tiny_model_dir, capsys
):
    config = write_grid(tmp_path, tiny_model_dir, grid=GRID)
    code = main(
        ["compare", "--config", str(config), "--output-dir", str(tmp_path / "o"), "--report-only"]
    )
    assert code == 2
    assert "holds no base measurement (base.json) of this grid" in capsys.readouterr().err


def test_report_only_before_any_cell_is_finished_is_one_clear_error(
    killed_and_restarted, tmp_path, capsys
):
    tmp, _ = killed_and_restarted
    out = tmp_path / "out"
    shutil.copytree(tmp / "out", out)
    shutil.rmtree(out / "cells")
    (out / "cells").mkdir()
    argv = ["compare", "--config", str(tmp / "grid.yaml"), "--output-dir", str(out)]
    assert main([*argv, "--report-only"]) == 2
    assert "holds no finished cell of this grid" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["0", "-5", "nan", "inf"])
def test_a_stale_after_that_is_not_a_positive_number_is_refused_before_any_work(
    value, tmp_path, tiny_model_dir, capsys
):
    config = write_grid(tmp_path, tiny_model_dir, grid=GRID)
    argv = ["compare", "--config", str(config), "--output-dir", str(tmp_path / "out")]
    assert main([*argv, "--stale-after", value]) == 2
    assert "--stale-after" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_base_claim_left_by_a_killed_job_is_taken_over_and_the_base_measured(
    tmp_path, tiny_model_dir
):
    from infosft.experiments import grid_runner

    config = write_grid(
        tmp_path, tiny_model_dir, grid={"methods": ["nll"], "learning_rates": [1e-3]}
    )
    # What a job killed while it measured the base leaves: cells/ (empty) and its claim.
    (tmp_path / "out" / "cells").mkdir(parents=True)
    dead = Claims(tmp_path / "out" / "claims", "killed").take("base")
    an_hour_ago = time.time() - 3600
    os.utime(tmp_path / "out" / "claims" / "base.json", (an_hour_ago, an_hour_ago))
    lines = []
    results = grid_runner.run_grid(
        read_grid(config), tmp_path / "out", log=lines.append, stale_after=60
    )
    assert any(line.startswith("measuring the base model") for line in lines)
    assert (
        results["base"]["retention_items"]
        == json.loads((tmp_path / "out" / "base.json").read_text())["retention_items"]
    )
    assert list((tmp_path / "out" / "claims").glob("base.*.taken"))
    dead.release()


def test_a_job_that_lost_its_claim_while_training_writes_no_result_for_that_cell(
    tmp_path, tiny_model_dir, monkeypatch
):
    from infosft.experiments import grid_runner

    grid = {"methods": ["nll"], "learning_rates": [1e-3]}
    config = write_grid(tmp_path, tiny_model_dir, grid=grid)
    real_train = grid_runner.train_cell
    trained = []

    def lose_claim_during_first_training(plan, cell, *args, **kwargs):
        if not trained:
            # Another job takes the cell over (this one seemed frozen), then goes quiet.
            (tmp_path / "thief.json").write_text(json.dumps({"job": "thief", "token": "t"}))
            os.replace(tmp_path / "thief.json", tmp_path / "out" / "claims" / f"{cell.name}.json")
        trained.append(cell.name)
        return real_train(plan, cell, *args, **kwargs)

    monkeypatch.setattr(grid_runner, "train_cell", lose_claim_during_first_training)
    lines = []
    grid_runner.run_grid(read_grid(config), tmp_path / "out", log=lines.append, stale_after=1)
    assert any("another job took this cell over" in line for line in lines)
    # Had the first result been written, the cell would count as finished: it was discarded,
    # and the cell trained again once the thief's claim went stale.
    assert len(trained) == 2
    assert len(list((tmp_path / "out" / "cells").glob("*.json"))) == 1
