"""One run's folder, ``<root>/<output-dir>/<run-name>``: where it is, what its files are called,
which metric columns ``metrics.csv`` has, and reading them back. The ServerApp writes it
(:mod:`fedgma.app.outputs`); every tool that looks for a run asks here.

- ``checkpoint.npz``: the state after the last completed round (``fedgma.loop.checkpoint``);
- ``config.json``: the validated run settings and facts such as the run id;
- ``metrics.csv``: one row per round (round 0 is the initial model), :data:`METRIC_COLUMNS`;
- ``summary.json``: the last row and the best OOD accuracy;
- ``final_model.pt``: the final global ``state_dict``;
- ``.writer.lock``: locked by the ServerApp writing the run (:mod:`fedgma.app.run_lock`).

Needs neither torch nor Flower: the host-side tools read run folders with it.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedgma.loop.checkpoint import CHECKPOINT_FILE

from .config import run_path

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.csv"
SUMMARY_FILE = "summary.json"
MODEL_FILE = "final_model.pt"
LOCK_FILE = ".writer.lock"

METRIC_COLUMNS = (
    "round",
    "wall-seconds",
    "round-seconds",
    "id-accuracy",
    "id-loss",
    "ood-accuracy",
    "ood-loss",
    "plain-accuracy",
    "plain-loss",
    "train-loss",
    "mask-kept-fraction",
    "mask-mean",
    "agreement-mean",
    "mask-kept-red",
    "mask-kept-green",
    "mask-kept-blue",
    "replies-sent",
    "replies-used",
    "replies-failed",
    "replies-timed-out",
    "replies-dropped",
    "replies-clipped",
    "replies-corrected",
    "model-updated",
    "update-norm",
    "client-eval-loss",
    "client-eval-accuracy",
    # Where a round's time goes (seconds). Server: waiting for the training replies,
    # aggregation, waiting for client evaluation replies, central evaluation; of each
    # wait, the part after the newest reply was made (its upload and the server's polling).
    "train-wait-seconds",
    "train-reply-lag-seconds",
    "aggregate-seconds",
    "client-eval-wait-seconds",
    "client-eval-reply-lag-seconds",
    "central-eval-seconds",
    # Clients (mean over the used replies): from the instruction's creation to the
    # ClientApp starting (deployed: the SuperNode's pull and the SuperExec's launch;
    # simulated: waiting for a worker), ClientApp process start-up (deployment only),
    # settings + partition + model, local training.
    "pull-wait-seconds",
    "clientapp-start-seconds",
    "setup-seconds",
    "train-seconds",
)


class UnknownMetric(ValueError):
    """A metrics row names a column that :data:`METRIC_COLUMNS` does not declare."""


def metrics_row(values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` as a full ``metrics.csv`` row (missing columns empty).

    Raises
    ------
    UnknownMetric
        If ``values`` names an undeclared column: declare it in :data:`METRIC_COLUMNS`.
    """
    unknown = sorted(set(values) - set(METRIC_COLUMNS))
    if unknown:
        raise UnknownMetric(f"metrics.csv has no column(s) {unknown}: declare them in fedgma.app.run_folder")
    return {column: values.get(column, "") for column in METRIC_COLUMNS}


def read_rows(path: Path) -> list[dict[str, str]]:
    """The rows of a CSV file, or none if it does not exist yet."""
    if not path.is_file():
        return []
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


@dataclass(frozen=True)
class RunFolder:
    """The files of the run folder ``path``."""

    path: Path

    @classmethod
    def at(cls, root: Path, output_dir: str, run_name: str, key: str = "run-name") -> RunFolder:
        """``<root>/<output-dir>/<run-name>``, as the ServerApp resolves it: refused (``ConfigError``
        naming ``key``) if it leaves ``root``, the server's output root."""
        return cls(run_path(root, key, output_dir, run_name))

    @classmethod
    def of_run(cls, root: Path, settings: Mapping[str, Any]) -> RunFolder:
        """The folder of the run with these ``--run-config`` settings (``resume`` if set, else
        ``run-name``; ``output-dir`` absent is the app's default, the root itself)."""
        resume = str(settings.get("resume") or "")
        name = resume or str(settings["run-name"])
        return cls.at(root, str(settings.get("output-dir") or ""), name, "resume" if resume else "run-name")

    @property
    def checkpoint(self) -> Path:
        return self.path / CHECKPOINT_FILE

    @property
    def config(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def metrics(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def summary(self) -> Path:
        return self.path / SUMMARY_FILE

    @property
    def model(self) -> Path:
        return self.path / MODEL_FILE

    def is_finished(self) -> bool:
        """The ServerApp writes ``summary.json`` last: a run with one finished."""
        return self.summary.is_file()

    def rows(self) -> list[dict[str, str]]:
        """``metrics.csv``'s rows as text (none before the first round)."""
        return read_rows(self.metrics)

    def read_config(self) -> dict[str, Any]:
        """``config.json``: the run's validated settings (``RunConfig`` field names) and facts."""
        return dict(json.loads(self.config.read_text()))

    def read_summary(self) -> dict[str, Any]:
        """``summary.json``: the last row and the best OOD accuracy."""
        return dict(json.loads(self.summary.read_text()))
