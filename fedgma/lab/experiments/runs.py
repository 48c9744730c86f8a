"""A grid's finished runs as the report reads them from ``results.csv``: their facts, per-round
metrics, and the per-seed statistics the tables and figures share."""

from __future__ import annotations

import csv
import statistics
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from .grids import ABLATION_SETTING
from .verdicts import paired


@dataclass
class Run:
    """One finished run: its facts and its per-round metrics."""

    name: str
    setting: str
    strategy: str
    seed: int
    studies: tuple[str, ...]
    local_epochs: int
    tau: float | None
    client_lr: float | None
    rounds: list[dict[str, float]]

    @property
    def trained(self) -> list[dict[str, float]]:
        return [r for r in self.rounds if r["round"] >= 1]

    @property
    def peak_ood(self) -> float:
        return max(r["ood-accuracy"] for r in self.trained)

    @property
    def peak_round(self) -> int:
        """The first round at which the OOD accuracy is at its peak."""
        best = self.peak_ood
        return int(next(r["round"] for r in self.trained if r["ood-accuracy"] == best))

    @property
    def final_ood(self) -> float:
        return self.trained[-1]["ood-accuracy"]

    @property
    def final_id(self) -> float:
        return self.trained[-1]["id-accuracy"]

    @property
    def seconds_per_round(self) -> float:
        """Mean round time, leaving out round 1 (it starts the simulation's workers)."""
        rounds = self.trained[1:] or self.trained
        return statistics.fmean(r["round-seconds"] for r in rounds)

    @property
    def mask_kept(self) -> float | None:
        values = [r["mask-kept-fraction"] for r in self.trained if r.get("mask-kept-fraction") is not None]
        return statistics.fmean(values) if values else None


def _number(text: str) -> float | None:
    return float(text) if text not in ("", None) else None


def load_runs(results_dir: Path) -> list[Run]:
    """Every run in ``results.csv``, rounds in order."""
    rows_by_run: dict[str, list[dict[str, str]]] = defaultdict(list)
    with (results_dir / "results.csv").open(newline="") as handle:
        for row in csv.DictReader(handle):
            rows_by_run[row["run"]].append(row)
    runs = []
    for name, rows in rows_by_run.items():
        first = rows[0]
        metrics = [
            {k: _number(v) for k, v in row.items()
             if k not in ("run", "setting", "strategy", "seed", "studies", "dataset", "client-lr")}
            for row in rows
        ]
        metrics.sort(key=lambda r: r["round"] or 0.0)  # every row has its round
        runs.append(Run(
            name=name, setting=first["setting"], strategy=first["strategy"], seed=int(first["seed"]),
            studies=tuple(first["studies"].split("+")), local_epochs=int(float(first["local-epochs"])),
            tau=_number(first["tau"]), client_lr=_number(first.get("client-lr", "")),
            rounds=cast(list[dict[str, float]], metrics),  # the columns read here are never empty
        ))
    return runs


def mean_std(values: list[float]) -> str:
    """``0.7123 +- 0.0104`` (std over seeds; ``+- 0`` shown as n/a for one seed)."""
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.fmean(values):.4f} ± {statistics.stdev(values):.4f}"


def seed_values(runs: list[Run], metric: str) -> dict[int, float]:
    return {r.seed: getattr(r, metric) for r in runs}


def margin(runs: list[Run], baseline: list[Run], metric: str) -> str:
    """Mean +- std of the per-seed differences to the baseline, in accuracy points (%)."""
    difference = paired(seed_values(runs, metric), seed_values(baseline, metric))
    if difference is None:
        return "-"
    diffs = difference.differences
    if len(diffs) == 1:
        return f"{diffs[0]:+.1f}"
    return f"{statistics.fmean(diffs):+.1f} ± {statistics.stdev(diffs):.1f}"


def select(runs: list[Run], setting: str, strategy: str, study: str = "main", **facts: object) -> list[Run]:
    chosen = [r for r in runs if r.setting == setting and r.strategy == strategy and study in r.studies]
    for key, value in facts.items():
        chosen = [r for r in chosen if getattr(r, key) == value]
    return sorted(chosen, key=lambda r: r.seed)


def tau_runs(runs: list[Run]) -> list[Run]:
    """The tau ablation's runs (its tau = 0 run is labelled as the no-mask control it also is)."""
    return sorted((r for r in runs if r.setting == ABLATION_SETTING and "tau" in r.studies), key=lambda r: r.seed)
