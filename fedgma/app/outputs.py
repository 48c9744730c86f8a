"""What a run leaves in its folder ``<output-dir>/<run-name>/`` (its place, file names and
metric columns: :mod:`fedgma.app.run_folder`): the validated settings, one metrics row per round
(round 0 is the initial model; appended as the run goes, so an interrupted run keeps its
rows), the final global ``state_dict`` (``torch.load`` it) and a summary.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import torch

from fedgma.loop import RoundOutcome
from fedgma.loop.atomic import atomic_write
from fedgma.loop.outcome import RowValue

from .run_folder import METRIC_COLUMNS, RunFolder, metrics_row
from .settings import RunConfig

__all__ = ["METRIC_COLUMNS", "RunOutputs", "outcome_row"]


def outcome_row(outcome: RoundOutcome) -> dict[str, RowValue]:
    """The round's ``metrics.csv`` row. The clients name their own metrics: of those, only
    the declared columns are kept (``num-examples``, or whatever a client adds, is not); every
    other name must be a declared column."""
    row = outcome.as_row()
    from_clients = set(outcome.train_metrics or {}) | {f"client-{k}" for k in outcome.evaluate_metrics or {}}
    return {k: v for k, v in row.items() if k in METRIC_COLUMNS or k not in from_clients}


class RunOutputs:
    """Writes one run's files.

    Parameters
    ----------
    run_dir : Path
        The run's own directory; created if missing.
    rows : Optional[list[dict]]
        Resuming: the rows of the rounds the checkpoint holds, which ``metrics.csv``
        starts with (rows of later rounds, written after it, are gone). ``None``
        starts a new file.
    """

    def __init__(self, run_dir: Path, rows: list[dict[str, RowValue]] | None = None) -> None:
        self.run_dir = run_dir
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.files = RunFolder(run_dir)
        self.metrics_path = self.files.metrics
        self.rows: list[dict[str, RowValue]] = [metrics_row(row) for row in rows or []]
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=METRIC_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        payload = buffer.getvalue().encode()
        atomic_write(self.metrics_path, lambda f: f.write(payload))

    def write_config(self, config: RunConfig, extra: dict[str, Any]) -> None:
        """Save the run settings and facts such as the run id."""
        payload = json.dumps({**config.flat(), **extra}, indent=2).encode()
        atomic_write(self.files.config, lambda f: f.write(payload))

    def add_row(self, row: dict[str, RowValue]) -> None:
        """Append one round's metrics (missing ones left empty; an undeclared one raises
        ``UnknownMetric``: see :func:`outcome_row`)."""
        clean = metrics_row(row)
        self.rows.append(clean)
        with self.metrics_path.open("a", newline="") as handle:
            csv.DictWriter(handle, fieldnames=METRIC_COLUMNS, lineterminator="\n").writerow(clean)

    def save_model(self, state_dict: dict[str, torch.Tensor]) -> Path:
        """Save the final global weights; returns the file's path."""
        path = self.files.model
        atomic_write(path, lambda f: torch.save(state_dict, f))
        return path

    def write_summary(self, label: str) -> dict[str, Any]:
        """Save and return the final row plus the best OOD accuracy."""
        rounds = [r for r in self.rows if r["round"] != 0] or self.rows
        last = rounds[-1]
        summary = {
            "strategy": label,
            "rounds": last["round"],
            "final-id-accuracy": last["id-accuracy"],
            "final-ood-accuracy": last["ood-accuracy"],
            "peak-ood-accuracy": max(r["ood-accuracy"] for r in rounds),
            "wall-seconds": last["wall-seconds"],
        }
        payload = json.dumps(summary, indent=2).encode()
        atomic_write(self.files.summary, lambda f: f.write(payload))
        return summary
