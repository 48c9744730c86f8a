"""The files of one run's folder: every module that writes or reads them names them here.

- ``checkpoint.npz``: the state after the last completed round (``fedgma.loop.checkpoint``);
- ``config.json``: the validated run settings and facts such as the run id;
- ``metrics.csv``: one row per round (round 0 is the initial model);
- ``summary.json``: the last row and the best OOD accuracy;
- ``final_model.pt``: the final global ``state_dict``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunFolder:
    """The paths of the files in the run folder ``path``."""

    path: Path

    @property
    def checkpoint(self) -> Path:
        return self.path / "checkpoint.npz"

    @property
    def config(self) -> Path:
        return self.path / "config.json"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.csv"

    @property
    def summary(self) -> Path:
        return self.path / "summary.json"

    @property
    def model(self) -> Path:
        return self.path / "final_model.pt"
