"""How fast a grid went: the seconds per round by kind of run, and the grid's wall time.

Both come from each finished run's own clock (``wall-seconds`` in its summary) and how the grid
made it (:data:`MADE_FILE`, written beside the run): runs made ``jobs`` at once share the machine,
so each counts ``1 / jobs`` of its clock towards the grid's time. Runs made before the grid
recorded this count in full (an upper bound). ``grid status`` plans the runs left from this pace
and the report states it, so the two never disagree.
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from fedgma.app.run_folder import RunFolder

# How the grid made a finished run (jobs at once, its Ray, the clients' CPUs, GPUs and device): it does
# not change a CPU run's metrics, but it does its seconds per round, and a GPU run is not bit-for-bit a
# CPU run. Written by the grid into the run's folder when the run finishes.
MADE_FILE = "made.json"


def read_made(run_dir: Path) -> dict[str, object]:
    """How the grid made a finished run (:data:`MADE_FILE`); empty where it was not recorded."""
    try:
        made = json.loads((run_dir / MADE_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return made if isinstance(made, dict) else {}


def kind_of(task: str, clients: int) -> str:
    """A kind of run, as the pace is given by: its task and federation size."""
    return f"{task}, {clients} clients"


@dataclass(frozen=True)
class RunClock:
    """One finished run's clock: its kind, its seconds after the last round, its rounds, and how
    many runs the grid made at once beside it (None where not recorded)."""

    kind: str
    seconds: float
    rounds: int
    jobs: int | None

    @classmethod
    def of(cls, folder: RunFolder, kind: str) -> RunClock:
        summary = folder.read_summary()
        jobs = read_made(folder.path).get("jobs")
        return cls(kind, float(summary["wall-seconds"]), int(summary["rounds"]),
                   jobs if isinstance(jobs, int) and not isinstance(jobs, bool) and jobs >= 1 else None)

    @property
    def grid_seconds(self) -> float:
        """This run's share of the grid's wall time (its whole clock where ``jobs`` is unknown)."""
        return self.seconds / (self.jobs or 1)


@dataclass(frozen=True)
class Pace:
    """The grid's pace: its seconds per round by kind (from the runs whose ``jobs`` was recorded,
    where a kind has any, else from all of its runs' own clocks), and its time so far."""

    per_round: dict[str, float]
    runs: dict[str, int]  # the runs each kind's figure comes from
    guessed: tuple[str, ...]  # kinds whose figure includes runs of unknown jobs (maybe slower)
    clock_seconds: float  # the runs' own clocks, summed
    wall_seconds: float  # the grid's wall time: each run's clock / its jobs (unknown: in full)
    unrecorded: int  # runs without a record of their jobs

    @property
    def overall(self) -> float:
        """The mean of the kinds' seconds per round: for a kind with no finished run yet."""
        return statistics.fmean(self.per_round.values()) if self.per_round else 0.0

    def describe(self) -> str:
        """``binary, 10 clients 1.40 s (12 runs), ...`` (sorted by kind)."""
        return ", ".join(
            f"{kind} {value:.2f} s ({self.runs[kind]} runs{', jobs not recorded' if kind in self.guessed else ''})"
            for kind, value in sorted(self.per_round.items()))


def pace(clocks: Sequence[RunClock]) -> Pace | None:
    """The pace of these finished runs; None if there are none."""
    if not clocks:
        return None
    by_kind: dict[str, list[RunClock]] = defaultdict(list)
    for clock in clocks:
        by_kind[clock.kind].append(clock)
    per_round: dict[str, float] = {}
    runs: dict[str, int] = {}
    guessed: list[str] = []
    for kind, kind_clocks in by_kind.items():
        counted = [c for c in kind_clocks if c.jobs is not None]
        if not counted:
            counted = kind_clocks
            guessed.append(kind)
        per_round[kind] = sum(c.grid_seconds for c in counted) / sum(c.rounds for c in counted)
        runs[kind] = len(counted)
    return Pace(per_round, runs, tuple(sorted(guessed)),
                clock_seconds=sum(c.seconds for c in clocks),
                wall_seconds=sum(c.grid_seconds for c in clocks),
                unrecorded=sum(1 for c in clocks if c.jobs is None))
