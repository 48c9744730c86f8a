"""Run a grid through Flower's simulation runtime, resumably.

Each run is a real ``flwr run`` of this app against one simulation SuperLink
started for the grid. A run counts as finished when its ``summary.json``
exists (the ServerApp writes it last) and its ``config.json`` agrees with
the grid's settings; finished runs are never re-run. An interrupted run has no
summary; it continues from its last round checkpoint (``resume``).

Layout under the results directory::

    runs/<output-dir>/<run-name>/metrics.csv, config.json, summary.json, final_model.pt
                      (the app's run folder, :class:`fedgma.app.run_folder.RunFolder`;
                      output-dir is empty unless overridden)
    results.csv       every round of every finished run, one row each
    grid.json         the grid's name, scale and run list
"""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from fedgma.app.run_folder import METRIC_COLUMNS, RunFolder
from fedgma.app.settings import RunConfig, not_result_settings, parse_run_config
from fedgma.deployment.app_folder import app_defaults, app_dir
from fedgma.deployment.flower import HostSettings, SimulationRuntime
from fedgma.loop.atomic import atomic_write

from .grids import Grid, RunSpec
from .results import saved_settings

RUN_COLUMNS = ("run", "setting", "strategy", "seed", "studies", "dataset", "local-epochs", "tau", "server-lr",
               "client-lr")
# Settings that do not change a run's result, so an existing run may differ in them.
NOT_COMPARED = {key.replace("-", "_") for key in not_result_settings()} - {"num_server_rounds"}


# Seconds per run outside the run's own clock (flwr run's submission, the app's start): the
# median over 90 runs of the full grid's log was 9.6 s.
START_UP_SECONDS = 10.0


@dataclass(frozen=True)
class TimeLeft:
    """A grid's planned remaining time: seconds, runs, and the measured seconds per round used."""

    seconds: float
    runs: int
    per_round: dict[str, float]

    def format(self) -> str:
        measured = ", ".join(f"{kind} {value:.2f} s" for kind, value in sorted(self.per_round.items()))
        return (f"{self.runs} runs left: about {format_seconds(self.seconds)} (h:mm:ss) at the measured time "
                f"per round ({measured}) plus {START_UP_SECONDS:g} s per run")


def _kind(spec: RunSpec) -> tuple[object, int]:
    return spec.run_config.get("task"), spec.clients


class GridMismatch(RuntimeError):
    """An existing run directory holds a run made with other settings."""


def format_seconds(seconds: float) -> str:
    whole = round(seconds)
    return f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"


class GridRunner:
    """Runs the missing runs of a grid and keeps ``results.csv`` up to date.

    Parameters
    ----------
    grid : Grid
        The runs to make.
    results_dir : Path
        Where the runs' directories and the combined CSV go.
    overrides : dict
        Run settings applied to every run (e.g. ``dataset``).
    data : HostSettings | None
        Where this machine keeps the data sets, and whether it may download them (the
        output root is always the grid's ``runs`` folder).
    run_timeout : float
        Seconds allowed per run.
    app : Path | None
        The Flower app folder to submit (default: :func:`fedgma.deployment.app_folder.app_dir`).
    echo : callable
        Where progress lines go.
    """

    def __init__(
        self,
        grid: Grid,
        results_dir: Path,
        overrides: dict[str, object] | None = None,
        run_timeout: float = 3600.0,
        echo: Callable[[str], None] = print,
        data: HostSettings | None = None,
        app: Path | None = None,
    ) -> None:
        self.grid = grid
        self.results_dir = results_dir.resolve()
        self.runs_dir = self.results_dir / "runs"
        self.overrides = dict(overrides or {})
        self.host = replace(data or HostSettings(), output_root=self.runs_dir)
        self.run_timeout = run_timeout
        self.echo = echo
        self.app: Path | None = app

    def run_config(self, spec: RunSpec, resume: bool = False) -> dict[str, object]:
        """The ``--run-config`` of one run (Flower fills in the other defaults)."""
        config = {**spec.run_config, **self.overrides, "run-name": spec.name}  # below the runs folder
        if resume:
            config["resume"] = spec.name
        return config

    def validated(self, spec: RunSpec) -> RunConfig:
        """The run's settings as the ServerApp will see them (raises ConfigError)."""
        return parse_run_config({**app_defaults(self.app), **self.run_config(spec)})

    def folder(self, spec: RunSpec) -> RunFolder:
        """Where the ServerApp puts the run: ``runs/<output-dir>/<run-name>``."""
        return RunFolder.at(self.runs_dir, self.validated(spec).outputs.output_dir, spec.name)

    def is_finished(self, spec: RunSpec) -> bool:
        """True if the run's summary exists; raises GridMismatch if its settings differ."""
        folder = self.folder(spec)
        if not folder.is_finished():
            return False
        saved = saved_settings(folder, app_defaults(self.app))
        differing = sorted(
            key.replace("_", "-")
            for key, value in self.validated(spec).flat().items()
            if key not in NOT_COMPARED and saved[key] != value
        )
        if differing:
            raise GridMismatch(
                f"{folder.path} holds a finished run made with other settings ({', '.join(differing)}); "
                "choose another results directory or remove that run"
            )
        return True

    def status(self) -> list[tuple[RunSpec, bool]]:
        """Every run of the grid and whether it is finished."""
        return [(spec, self.is_finished(spec)) for spec in self.grid.runs]

    def time_left(self, status: list[tuple[RunSpec, bool]]) -> TimeLeft | None:
        """The unfinished runs' time, planned from the finished runs' measured time per round (by
        task and federation size: a run of another kind takes the mean over all), plus
        :data:`START_UP_SECONDS` per run; None before any run has finished."""
        per_round: dict[tuple[object, int], list[float]] = {}
        for spec, finished in status:
            if finished:
                summary = self.folder(spec).read_summary()
                per_round.setdefault(_kind(spec), []).append(float(summary["wall-seconds"]) / int(summary["rounds"]))
        if not per_round:
            return None
        measured = {kind: sum(values) / len(values) for kind, values in per_round.items()}
        overall = sum(sum(v) for v in per_round.values()) / sum(len(v) for v in per_round.values())
        todo = [spec for spec, finished in status if not finished]
        seconds = sum(spec.rounds * measured.get(_kind(spec), overall) + START_UP_SECONDS for spec in todo)
        return TimeLeft(seconds, len(todo), {f"{task}, {clients} clients": value
                                             for (task, clients), value in measured.items()})

    def write_manifest(self) -> None:
        manifest = {
            "grid": self.grid.name,
            "description": self.grid.description,
            "scale": asdict(self.grid.scale),
            "overrides": self.overrides,
            "runs": [
                {"name": s.name, "folder": str(self.folder(s).path.relative_to(self.runs_dir)),
                 "setting": s.setting, "strategy": s.label, "seed": s.seed,
                 "studies": list(s.studies), "run-config": s.run_config}
                for s in self.grid.runs
            ],
        }
        payload = json.dumps(manifest, indent=2).encode()
        atomic_write(self.results_dir / "grid.json", lambda f: f.write(payload))

    def write_combined(self) -> Path:
        """Rewrite ``results.csv`` from the finished runs' metrics files."""
        path = self.results_dir / "results.csv"
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=RUN_COLUMNS + METRIC_COLUMNS, lineterminator="\n")
        writer.writeheader()
        for spec in self.grid.runs:
            folder = self.folder(spec)
            if not folder.is_finished():
                continue
            config = folder.read_config()
            facts = {
                "run": spec.name, "setting": spec.setting, "strategy": spec.label, "seed": spec.seed,
                "studies": "+".join(spec.studies), "dataset": config["dataset"],
                "local-epochs": config["local_epochs"], "tau": "" if config["tau"] is None else config["tau"],
                "server-lr": config["server_lr"], "client-lr": config["client_lr"],
            }
            for row in folder.rows():
                writer.writerow({**facts, **row})
        payload = buffer.getvalue().encode()
        atomic_write(path, lambda f: f.write(payload))
        return path

    def run(self) -> int:
        """Make every missing run; returns the number of runs that failed."""
        for spec in self.grid.runs:  # validate every run's settings before starting anything
            self.validated(spec)
        todo = [spec for spec, finished in self.status() if not finished]
        total = len(self.grid.runs)
        self.results_dir.mkdir(parents=True, exist_ok=True)
        self.write_manifest()
        self.echo(f"grid {self.grid.name}: {total} runs, {total - len(todo)} already finished, "
                  f"{len(todo)} to run; results in {self.results_dir}")
        if not todo:
            self.write_combined()
            return 0
        rounds_left = sum(s.rounds for s in todo)
        started = time.monotonic()
        rounds_done = 0
        failures: list[str] = []
        with SimulationRuntime(self.results_dir / "runtime", self.host) as runtime:
            for index, spec in enumerate(todo, start=total - len(todo) + 1):
                rounds = spec.rounds
                folder = self.folder(spec)
                metrics_path = folder.metrics
                # An interrupted run continues from its last checkpoint.
                resume = folder.checkpoint.is_file()
                if not resume and metrics_path.exists():
                    metrics_path.unlink()  # an attempt that never finished a round
                shown = [len([r for r in folder.rows() if r["round"] != "0"])]

                def progress(spec: RunSpec = spec, index: int = index, rounds: int = rounds,
                             folder: RunFolder = folder, shown: list[int] = shown, before: int = rounds_done) -> None:
                    rows = [r for r in folder.rows() if r["round"] != "0"]
                    for row in rows[shown[0]:]:
                        done = before + int(row["round"])
                        elapsed = time.monotonic() - started
                        remaining = elapsed / done * (rounds_left - done)
                        self.echo(
                            f"[{index}/{total}] {spec.name} round {row['round']}/{rounds} "
                            f"OOD {float(row['ood-accuracy']):.4f} ID {float(row['id-accuracy']):.4f} | "
                            f"elapsed {format_seconds(elapsed)}, remaining ~{format_seconds(remaining)}"
                        )
                    shown[0] = len(rows)

                federation = f"num-supernodes={spec.clients} client-resources-num-cpus=1"
                run_id = runtime.cli.submit(app_dir(self.app), self.run_config(spec, resume), federation)
                self.echo(f"[{index}/{total}] {spec.name}: run {run_id} "
                          f"{'resumed after round ' + str(shown[0]) if resume else 'started'}")
                summary_path = folder.summary
                try:
                    outcome = runtime.cli.wait(run_id, self.run_timeout, poll=30.0, on_poll=progress,
                                               check_now=summary_path.exists)
                    ended = f"{outcome.status} {outcome.details}"
                    completed = outcome.completed
                except TimeoutError as err:
                    runtime.cli.stop_run(run_id)
                    ended, completed = str(err), False
                progress()
                rounds_done += rounds
                if completed and self.is_finished(spec):
                    self.write_combined()
                    continue
                failures.append(spec.name)
                self.echo(f"[{index}/{total}] {spec.name}: FAILED ({ended}); "
                          f"SuperLink log: {runtime.workdir / 'superlink.log'}")
                if len(failures) >= 3 and len(failures) == index - (total - len(todo)):
                    self.echo("the first three runs all failed: stopping the grid")
                    break
        self.write_combined()
        elapsed = time.monotonic() - started
        self.echo(f"grid {self.grid.name}: {len(todo) - len(failures)} runs made in {format_seconds(elapsed)}, "
                  f"{len(failures)} failed{': ' + ', '.join(failures) if failures else ''}")
        return len(failures)


def metrics_differences(committed: RunFolder, rerun: RunFolder) -> list[str]:
    """Where two runs' ``metrics.csv`` differ, timing columns (``*seconds``) left out; [] when
    every other cell is the same text: the accuracies and losses to the last digit, the mask
    statistics, the reply counts."""
    old, new = committed.rows(), rerun.rows()
    if len(old) != len(new):
        return [f"{len(old)} rows committed, {len(new)} rerun"]
    differences = []
    for row_old, row_new in zip(old, new, strict=True):
        for column in row_old:
            if column.endswith("seconds"):
                continue
            if row_old[column] != row_new.get(column):
                differences.append(f"round {row_old['round']} {column}: {row_old[column]} -> {row_new.get(column)}")
    return differences

