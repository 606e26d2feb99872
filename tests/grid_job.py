"""Run by tests/test_grid_jobs.py as one job of a grid: ``infosft <argv>`` in this process.

Probes are scored as in tests/test_compare.py (the random tiny model answers none), and each
cell's training first sleeps ``GRID_JOB_CELL_SLEEP`` seconds, so that a test can start jobs
together and find one of them mid-cell.
"""

import os
import sys
import time

from infosft.cli import main
from infosft.experiments import grid_runner, probes
from test_compare import passed_by_hash

probes.probe_passed = passed_by_hash
train_cell = grid_runner.train_cell


def slow_train_cell(*args, **kwargs):
    time.sleep(float(os.environ.get("GRID_JOB_CELL_SLEEP", "0")))
    return train_cell(*args, **kwargs)


grid_runner.train_cell = slow_train_cell
sys.exit(main(sys.argv[1:]))
