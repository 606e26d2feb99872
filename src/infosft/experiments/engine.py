"""Deprecated name of :mod:`infosft.experiments.grid_runner` (runs or resumes a grid)."""

import warnings

from infosft.experiments.grid_runner import *  # noqa: F403
from infosft.experiments.grid_runner import Plan, changed_parts, run_grid, train_cell  # noqa: F401

warnings.warn(
    "infosft.experiments.engine is now infosft.experiments.grid_runner; the old name goes away",
    DeprecationWarning,
    stacklevel=2,
)
