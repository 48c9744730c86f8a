"""What a run leaves in its folder ``<output-dir>/<run-name>/`` (the file names:
``fedgma.loop.run_folder.RunFolder``): the validated settings, one metrics row per round
(round 0 is the initial model; appended as the run goes, so an interrupted run keeps its
rows), the final global ``state_dict`` (``torch.load`` it) and a summary.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import torch

from fedgma.loop.atomic import atomic_write
from fedgma.loop.run_folder import RunFolder

from .settings import RunConfig

METRIC_COLUMNS = (
    "round",
    "wall-seconds",
    "round-seconds",
    "id-accuracy",
    "id-loss",
    "ood-accuracy",
    "ood-loss",
    "train-loss",
    "mask-kept-fraction",
    "mask-mean",
    "agreement-mean",
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

    def __init__(self, run_dir: Path, rows: list[dict[str, float | int | str]] | None = None) -> None:
        self.run_dir = run_dir
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.files = RunFolder(run_dir)
        self.metrics_path = self.files.metrics
        self.rows: list[dict[str, float | int | str]] = [
            {column: row.get(column, "") for column in METRIC_COLUMNS} for row in rows or []]
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=METRIC_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        payload = buffer.getvalue().encode()
        atomic_write(self.metrics_path, lambda f: f.write(payload))

    def write_config(self, config: RunConfig, extra: dict) -> None:
        """Save the run settings and facts such as the run id."""
        payload = json.dumps({**config.flat(), **extra}, indent=2).encode()
        atomic_write(self.files.config, lambda f: f.write(payload))

    def add_row(self, row: dict[str, float | int]) -> None:
        """Append one round's metrics (unknown keys are ignored, missing ones left empty)."""
        clean = {column: row.get(column, "") for column in METRIC_COLUMNS}
        self.rows.append(clean)
        with self.metrics_path.open("a", newline="") as handle:
            csv.DictWriter(handle, fieldnames=METRIC_COLUMNS, lineterminator="\n").writerow(clean)

    def save_model(self, state_dict: dict[str, torch.Tensor]) -> Path:
        """Save the final global weights; returns the file's path."""
        path = self.files.model
        atomic_write(path, lambda f: torch.save(state_dict, f))
        return path

    def write_summary(self, label: str) -> dict:
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
