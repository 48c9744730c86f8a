"""A grid's throughput with one run at a time and several at once, and what more CPUs for the
clients would give (``fedgma bench --parts jobs``)."""

from __future__ import annotations

import dataclasses
import math
import statistics
import tempfile
import time
from pathlib import Path

from fedgma.deployment.flower import HostSettings

BENCH_GRID = "when"  # its first runs: the runs a grid spends its hours on here
CLUSTER_CPUS = (10, 20)  # client CPUs of the clusters the estimate is for
PROJECTED_ROUNDS = 50  # the when grid's binary runs: what its hours are spent on


@dataclasses.dataclass(frozen=True)
class RoundSplit:
    """A round's measured parts, means over rounds 2+ of the runs made one at a time."""

    round_s: float
    train_wait_s: float
    client_train_s: float  # one client's set-up and training
    sampled: float  # clients per round
    actors: int  # clients that trained at once here

    @property
    def dispatch_s(self) -> float:
        """The training wait beyond the waves of client training: Flower's dispatch and uploads."""
        return max(0.0, self.train_wait_s - math.ceil(self.sampled / self.actors) * self.client_train_s)

    def bound(self) -> float:
        """Seconds per round if the clients' set-up and training took no time at all: what faster
        clients (GPUs) can at most bring, the rest of the round staying as measured."""
        return self.round_s - self.train_wait_s + self.dispatch_s

    def estimate(self, cpus: int) -> float:
        """Seconds per round with ``cpus`` clients training at once: the clients' part scales with
        the waves of clients (ceil(sampled / cpus)), everything else stays as measured. An estimate:
        it leaves out the network between hosts and any change in the server's own time."""
        return self.bound() + math.ceil(self.sampled / cpus) * self.client_train_s


@dataclasses.dataclass(frozen=True)
class JobsPace:
    """How a number of jobs made a batch of runs: the per-run time that does not depend on the
    rounds (start-up, round 1's warm-up, the end) and the seconds per later round."""

    jobs: int
    runs: int
    rounds: int
    seconds: float  # the whole batch, wall clock
    round_s: float  # mean seconds per round, rounds 2+, each job's own clock

    @property
    def fixed_s(self) -> float:
        """One job's wall seconds per run beyond its rounds 2+ (a run's share of the batch is
        ``seconds * jobs / runs``)."""
        return max(0.0, self.seconds * self.jobs / self.runs - (self.rounds - 1) * self.round_s)

    def runs_per_hour(self, rounds: int | None = None) -> float:
        """Measured (``rounds`` None) or projected to runs of ``rounds`` rounds from the same parts."""
        if rounds is None:
            return self.runs * 3600 / self.seconds
        return self.jobs * 3600 / (self.fixed_s + (rounds - 1) * self.round_s)


def grid_throughput(app: Path, runs: int = 4, rounds: int = 10, jobs: tuple[int, ...] = (1, 2),
                    project_to: int = PROJECTED_ROUNDS) -> tuple[list[str], dict[int, float]]:
    """Make the first ``runs`` runs of the ``when`` grid, shortened to ``rounds`` rounds, once for
    each number of ``jobs``; table rows (runs per hour, measured and projected to runs of
    ``project_to`` rounds, then the estimate for more client CPUs) and the runs per hour by jobs."""
    from fedgma.lab.experiments.grids import grid_by_name
    from fedgma.lab.experiments.runner import GridRunner, usable_cores

    grid = grid_by_name(BENCH_GRID)
    specs = tuple(dataclasses.replace(spec, run_config={**spec.run_config, "num-server-rounds": rounds})
                  for spec in grid.runs[:runs])
    subset = dataclasses.replace(grid, runs=specs)
    per_hour: dict[int, float] = {}
    lines = []
    split: RoundSplit | None = None
    paces: list[JobsPace] = []
    for count in jobs:
        with tempfile.TemporaryDirectory() as tmp:
            runner = GridRunner(subset, Path(tmp), app=app, jobs=count, data=HostSettings(download=False),
                                echo=lambda line: None)
            started = time.monotonic()
            failed = runner.run()
            seconds = time.monotonic() - started
            if failed:
                raise RuntimeError(f"benchmark grid with {count} job(s): {failed} run(s) failed")
            rows = [r for spec in specs for r in runner.folder(spec).rows() if int(r["round"]) >= 2]
            mean = {c: statistics.fmean(float(r[c]) for r in rows)
                    for c in ("round-seconds", "train-wait-seconds", "setup-seconds", "train-seconds",
                              "replies-sent")}
            paces.append(JobsPace(count, len(specs), rounds, seconds, mean["round-seconds"]))
            if count == 1:
                split = RoundSplit(mean["round-seconds"], mean["train-wait-seconds"],
                                   mean["setup-seconds"] + mean["train-seconds"], mean["replies-sent"],
                                   actors=usable_cores())
        pace, first = paces[-1], paces[0]
        per_hour[count] = pace.runs_per_hour()
        lines.append(f"| {count} | {runner.resources_line(count)} | {len(specs)} | {seconds:.0f} "
                     f"| {per_hour[count]:.1f} | {per_hour[count] / first.runs_per_hour():.2f} "
                     f"| {pace.round_s:.2f} | {pace.fixed_s:.0f} | {pace.runs_per_hour(project_to):.1f} "
                     f"| {pace.runs_per_hour(project_to) / first.runs_per_hour(project_to):.2f} |")
    if split is not None:
        lines += ["", f"Estimated seconds per round of these runs with more CPUs for the clients (a Ray cluster, one "
                  f"run at a time; from the parts measured above with 1 job: round {split.round_s:.2f} s, of "
                  f"which the wait for {split.sampled:.0f} clients {split.train_wait_s:.2f} s, one client's "
                  f"set-up and training {split.client_train_s:.2f} s, {split.actors} clients at a time; an estimate, "
                  "not a measurement: the network between hosts is left out):", "",
                  "| client CPUs | seconds per round | speed-up |", "|---|---|---|",
                  f"| {split.actors} (measured) | {split.round_s:.2f} | 1.00 |"]
        lines += [f"| {cpus} (estimate) | {split.estimate(cpus):.2f} | {split.round_s / split.estimate(cpus):.2f} |"
                  for cpus in CLUSTER_CPUS]
        lines.append(f"| any, clients' training taking no time (a bound for faster clients such as GPUs; "
                     f"not measured) | {split.bound():.2f} | {split.round_s / split.bound():.2f} |")
    return lines, per_hour
