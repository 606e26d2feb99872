"""Deprecated name of :mod:`infosft.experiments.inspect` (what ``infosft inspect`` runs)."""

import warnings

from infosft.experiments.inspect import *  # noqa: F403
from infosft.experiments.inspect import run_inspect  # noqa: F401

warnings.warn(
    "infosft.experiments.q_profile is now infosft.experiments.inspect; the old name goes away",
    DeprecationWarning,
    stacklevel=2,
)
