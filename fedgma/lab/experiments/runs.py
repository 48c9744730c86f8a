"""A grid's finished runs as the report reads them from ``results.csv``: their facts, per-round
metrics, and the per-seed statistics the tables and figures share."""

from __future__ import annotations

import csv
import itertools
import statistics
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from .grids import ABLATION_SETTING, ALL_SETTINGS
from .verdicts import paired

LAST_ROUNDS = 10  # the primary metric averages the accuracy over the last this many rounds


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

    def accuracies(self, test_set: str) -> list[tuple[int, float]]:
        """``(round, accuracy)`` on ``test_set`` (``ood``, ``id``, ``plain``) of the trained rounds
        that have it (a column the run does not have, or a blank cell, is absent)."""
        column = f"{test_set}-accuracy"
        return [(int(r["round"]), r[column]) for r in self.trained if r.get(column) is not None]

    def primary(self, test_set: str) -> float | None:
        """The primary metric: mean accuracy on ``test_set`` over the last :data:`LAST_ROUNDS`
        rounds (N - 9 .. N; blank cells left out); None if the run has no such column."""
        return self.last_mean(f"{test_set}-accuracy")

    @property
    def best_id_round(self) -> int | None:
        """The first trained round at which the ID accuracy is at its best (chosen without
        the OOD test sets); None without ID accuracies."""
        rounds = self.accuracies("id")
        if not rounds:
            return None
        best = max(value for _, value in rounds)
        return next(number for number, value in rounds if value == best)

    def peak(self, test_set: str) -> float | None:
        """Accuracy on ``test_set`` at :attr:`best_id_round` (no peeking at the OOD test set)."""
        best = self.best_id_round
        return None if best is None else dict(self.accuracies(test_set)).get(best)

    def final(self, test_set: str) -> float | None:
        """Accuracy on ``test_set`` after the last round."""
        rounds = self.accuracies(test_set)
        return rounds[-1][1] if rounds else None

    def untrained(self, test_set: str) -> float | None:
        """Accuracy of the initial model (round 0) on ``test_set``."""
        return next((r.get(f"{test_set}-accuracy") for r in self.rounds if r["round"] == 0), None)

    def swing(self, test_set: str) -> float | None:
        """Mean absolute change of the accuracy on ``test_set`` between consecutive rounds over
        the last :data:`LAST_ROUNDS` rounds, in points."""
        values = [value for _, value in self.accuracies(test_set)[-LAST_ROUNDS - 1:]]
        steps = [abs(b - a) for a, b in itertools.pairwise(values)]
        return 100.0 * statistics.fmean(steps) if steps else None

    def rise(self, test_set: str) -> float | None:
        """How much the curve still rises: the mean accuracy on ``test_set`` over the last
        :data:`LAST_ROUNDS` rounds minus the mean over the :data:`LAST_ROUNDS` before, in points;
        None with fewer than twice that many rounds."""
        values = [value for _, value in self.accuracies(test_set)]
        if len(values) < 2 * LAST_ROUNDS:
            return None
        last, before = values[-LAST_ROUNDS:], values[-2 * LAST_ROUNDS:-LAST_ROUNDS]
        return 100.0 * (statistics.fmean(last) - statistics.fmean(before))

    def last_mean(self, column: str) -> float | None:
        """Mean of ``column`` over the last :data:`LAST_ROUNDS` trained rounds that have it."""
        values = [r[column] for r in self.trained[-LAST_ROUNDS:] if r.get(column) is not None]
        return statistics.fmean(values) if values else None

    @property
    def num_classes(self) -> int:
        return 10 if ALL_SETTINGS.get(self.setting, {}).get("task") == "ten-class" else 2

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


def mean_std(values: Sequence[float | None]) -> str:
    """``0.7123 +- 0.0104`` (std over seeds; ``+- 0`` shown as n/a for one seed)."""
    present = [v for v in values if v is not None]
    if not present:
        return "-"
    if len(present) == 1:
        return f"{present[0]:.4f}"
    return f"{statistics.fmean(present):.4f} ± {statistics.stdev(present):.4f}"


def seed_values(runs: list[Run], value: Callable[[Run], float | None]) -> dict[int, float]:
    """``value`` of each run by seed (runs without it left out)."""
    return {r.seed: v for r in runs if (v := value(r)) is not None}


def margin(runs: list[Run], baseline: list[Run], value: Callable[[Run], float | None]) -> str:
    """Mean +- std of the per-seed differences to the baseline, in accuracy points (%)."""
    difference = paired(seed_values(runs, value), seed_values(baseline, value))
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
