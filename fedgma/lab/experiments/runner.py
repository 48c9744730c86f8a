"""Run a grid through Flower's simulation runtime, resumably.

Each run is a real ``flwr run`` of this app against a simulation SuperLink
started for the grid (one per job when several runs go at once). A run counts as
finished when its ``summary.json`` exists (the ServerApp writes it last) and its
``config.json`` agrees with the grid's settings; finished runs are never re-run. An interrupted run has no
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
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from fedgma.app.config import DEVICE_ENV
from fedgma.app.run_folder import METRIC_COLUMNS, RunFolder
from fedgma.app.settings import RunConfig, not_result_settings, parse_run_config
from fedgma.deployment.app_folder import app_defaults, app_dir
from fedgma.deployment.flower import HostSettings, SimulationResources, SimulationRuntime
from fedgma.loop.atomic import atomic_write

from .grids import Grid, RunSpec
from .pace import MADE_FILE, Pace, RunClock, kind_of, pace
from .results import GRID_FILE, saved_settings

RUN_COLUMNS = ("run", "setting", "strategy", "seed", "studies", "dataset", "local-epochs", "tau", "server-lr",
               "client-lr")
# Settings that do not change a run's result, so an existing run may differ in them.
NOT_COMPARED = {key.replace("-", "_") for key in not_result_settings()} - {"num_server_rounds"}


# Seconds per run outside the run's own clock (flwr run's submission, the app's start): the
# median over 90 runs of the full grid's log was 9.6 s.
START_UP_SECONDS = 10.0


@dataclass(frozen=True)
class TimeLeft:
    """A grid's planned remaining time: seconds and runs, and the pace it was planned from."""

    seconds: float
    runs: int
    pace: Pace
    unmeasured: tuple[str, ...] = ()  # kinds left with no finished run: planned at the pace's overall mean

    def format(self) -> str:
        """Several lines: the estimate, then what it rests on."""
        lines = [f"{self.runs} runs left: about {format_seconds(self.seconds)} (h:mm:ss) of wall time at the pace "
                 "the grid made its finished runs",
                 f"  seconds per round, a run made with others at once counting its share of its clock: "
                 f"{self.pace.describe()}"]
        if self.pace.guessed:
            lines.append("  jobs not recorded: runs made before the grid wrote made.json count their whole clock "
                         "(too much where two ran at once), and only where a kind has no recorded run")
        if self.unmeasured:
            lines.append(f"  {', '.join(self.unmeasured)}: none finished yet, planned at the mean of the kinds")
        lines += [f"  plus {START_UP_SECONDS:g} s per run for its start-up (flwr run's submission, the app's start)",
                  "  what several at once gain here: `fedgma bench --parts jobs` (docs/scaling.md)"]
        return "\n".join(lines)


def _kind(spec: RunSpec) -> str:
    return kind_of(str(spec.run_config.get("task")), spec.clients)


def _per_round(spec: RunSpec, made: Pace) -> float:
    """The planned seconds per round of ``spec``: its kind's, or the kinds' mean for a kind not made yet."""
    return made.per_round.get(_kind(spec), made.overall)


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
    jobs : int
        Runs made at once, each its own simulation (its own SuperLink and Ray). With a private
        Ray per run, the machine's cores are split between them.
    resources : SimulationResources
        Which Ray the runs' ClientApps use and what each one reserves (default: a private Ray per
        run, 1 CPU per client).

    Raises
    ------
    ValueError
        If ``jobs`` is not an integer >= 1, or is above 1 while the runs join a Ray cluster:
        Flower 1.39 sizes each simulation's actor pool from the whole cluster
        (``pool_size_from_resources``), so runs at once would wait on each other's actors.
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
        jobs: int = 1,
        resources: SimulationResources | None = None,
    ) -> None:
        self.resources = resources or SimulationResources()
        if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
            raise ValueError(f"jobs must be an integer >= 1, got {jobs!r}")
        if jobs > 1 and self.resources.joins_cluster:
            raise ValueError(
                f"--jobs {jobs} with a Ray cluster ({self.resources.ray_address}): Flower 1.39 sizes each "
                "simulation's actor pool from the whole cluster, so runs at once would wait on each other's "
                "clients (and time out); on a cluster, runs go one at a time, each spread over the cluster")
        _check_machine(self.resources_for(jobs), data or HostSettings())
        self.jobs = jobs
        self._jobs_now = 1  # runs at once in the grid being made (at most ``jobs``)
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
        """The unfinished runs' time at the finished runs' :func:`~.pace.pace` (by task and
        federation size; a kind with none finished takes the mean of the kinds), plus
        :data:`START_UP_SECONDS` per run; None before any run has finished."""
        made = pace([RunClock.of(self.folder(spec), _kind(spec)) for spec, finished in status if finished])
        if made is None:
            return None
        todo = [spec for spec, finished in status if not finished]
        seconds = sum(spec.rounds * _per_round(spec, made) + START_UP_SECONDS for spec in todo)
        unmeasured = tuple(sorted({_kind(spec) for spec in todo} - made.per_round.keys()))
        return TimeLeft(seconds, len(todo), made, unmeasured)

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
            "cut": [{"name": s.name, "setting": s.setting} for s in self.grid.cut],
        }
        payload = json.dumps(manifest, indent=2).encode()
        atomic_write(self.results_dir / GRID_FILE, lambda f: f.write(payload))

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

    def run(self, only: Collection[str] | None = None) -> int:
        """Make every missing run (of those named in ``only``, if given), up to ``jobs`` at once;
        returns the number of runs that failed. ``results.csv`` and ``grid.json`` cover the whole grid."""
        for spec in self.grid.runs:  # validate every run's settings before starting anything
            self.validated(spec)
        status = [(spec, finished) for spec, finished in self.status() if only is None or spec.name in only]
        todo = [spec for spec, finished in status if not finished]
        total = len(status)
        self.results_dir.mkdir(parents=True, exist_ok=True)
        self.write_manifest()
        named = f" ({total} of {len(self.grid.runs)} named)" if only is not None else ""
        self.echo(f"grid {self.grid.name}: {total} runs{named}, {total - len(todo)} already finished, "
                  f"{len(todo)} to run; results in {self.results_dir}")
        if not todo:
            self.write_combined()
            return 0
        jobs = self._jobs_now = min(self.jobs, len(todo))
        self.echo(f"grid {self.grid.name}: {self.resources_line(jobs)}")
        left = self.time_left(status)
        progress = _Progress(todo, None if left is None else left.pace)
        failures: list[str] = []
        lock = threading.Lock()
        stop = threading.Event()  # set when the grid is interrupted: every job ends its run and stops
        queue = list(enumerate(todo, start=total - len(todo) + 1))
        attempted = [0]

        def worker(slot: int) -> None:
            workdir = self.results_dir / "runtime" / (f"job-{slot}" if jobs > 1 else "")
            with SimulationRuntime(workdir, self.host, resources=self.resources_for(jobs)) as runtime:
                while True:
                    with lock:
                        # Three failures in the first three runs: a broken set-up, not a bad run.
                        if not queue or (len(failures) >= 3 and len(failures) == attempted[0]):
                            return
                        index, spec = queue.pop(0)
                        attempted[0] += 1
                    made = self._make(spec, f"[{index}/{total}]", runtime, progress, stop)
                    with lock:
                        if made:
                            self.write_combined()
                        else:
                            failures.append(spec.name)

        if jobs == 1:
            worker(1)  # an interrupt unwinds through the runtime, which stops its processes
        else:
            errors: list[BaseException] = []
            ended = [threading.Event() for _ in range(jobs)]

            def guarded(slot: int) -> None:
                try:
                    worker(slot)
                except _Stopped:
                    pass
                except BaseException as err:  # re-raised below, after the other jobs end
                    with lock:
                        errors.append(err)
                        queue.clear()  # the other jobs finish their current run, then stop
                finally:
                    ended[slot - 1].set()

            # The main thread waits on events, never in Thread.join: Python 3.11's join, interrupted
            # by the SIGTERM handler's exception, marks the thread it waits for as ended, and the
            # interpreter then exits without it, mid-way through stopping its run's processes.
            def wait_for_jobs() -> None:
                for event in ended:
                    while not event.wait(0.5):
                        pass

            threads = [threading.Thread(target=guarded, args=(slot,), name=f"grid-job-{slot}")
                       for slot in range(1, jobs + 1)]
            for thread in threads:
                thread.start()
            try:
                wait_for_jobs()
            except BaseException:  # Ctrl-C or SIGTERM (fedgma.cli): stop every job's run, then unwind
                stop.set()
                wait_for_jobs()
                for err in errors:  # e.g. a process that would not stop: said, not lost in the unwinding
                    print(f"grid {self.grid.name}: while stopping: {type(err).__name__}: {err}", file=sys.stderr)
                raise
            for thread in threads:
                thread.join()  # each has ended its work
            if errors:
                raise errors[0]
        if len(failures) >= 3 and len(failures) == attempted[0] < len(todo):
            self.echo("the first three runs all failed: stopping the grid")
        self.write_combined()
        elapsed = progress.elapsed()
        made = attempted[0] - len(failures)
        rate = f" ({made * 3600 / elapsed:.1f} runs per hour, {jobs} at once)" if elapsed > 0 and made else ""
        self.echo(f"grid {self.grid.name}: {made} runs made in {format_seconds(elapsed)}{rate}, "
                  f"{len(failures)} failed{': ' + ', '.join(failures) if failures else ''}")
        return len(failures)

    def resources_for(self, jobs: int) -> SimulationResources:
        """Each run's Ray: with a private Ray per run and several jobs, the cores are split between them."""
        if jobs > 1 and not self.resources.joins_cluster and self.resources.ray_cpus is None:
            return replace(self.resources, ray_cpus=max(1, usable_cores() // jobs))
        return self.resources

    def resources_line(self, jobs: int) -> str:
        """Where the runs go, in words."""
        resources = self.resources_for(jobs)
        runs = "one run at a time" if jobs == 1 else f"{jobs} runs at once"
        cpus = resources.ray_cpus
        where = (f"each with a private Ray ({'all' if cpus is None else cpus} CPU{'' if cpus == 1 else 's'})"
                 if not resources.joins_cluster else f"on the Ray cluster at {resources.ray_address}")
        gpus = f", {resources.client_gpus:g} GPU" if resources.client_gpus else ""
        return f"{runs}, {where}; each client {resources.client_cpus} CPU{gpus}"

    def _make(self, spec: RunSpec, tag: str, runtime: SimulationRuntime, progress: _Progress,
              stop: threading.Event | None = None) -> bool:
        """One run through ``runtime``, resumed from its checkpoint if it was interrupted; True if
        it finished. Raises :class:`_Stopped` soon after ``stop`` is set (the run resumes later)."""
        folder = self.folder(spec)
        resume = folder.checkpoint.is_file()
        resources = runtime.resources
        made_by = {"jobs": self._jobs_now, "ray-address": resources.ray_address, "ray-cpus": resources.ray_cpus,
                   "client-cpus": resources.client_cpus, "client-gpus": resources.client_gpus,
                   "device": ("each host's `ray start` environment" if resources.joins_cluster
                              else self.host.device or os.environ.get(DEVICE_ENV) or "auto")}
        if not resume and folder.metrics.exists():
            folder.metrics.unlink()  # an attempt that never finished a round
        shown = len([r for r in folder.rows() if r["round"] != "0"])
        before = shown

        def report() -> None:
            nonlocal shown
            if stop is not None and stop.is_set():
                raise _Stopped(spec.name)
            rows = [r for r in folder.rows() if r["round"] != "0"]
            for row in rows[shown:]:
                self.echo(f"{tag} {spec.name} round {row['round']}/{spec.rounds} "
                          f"OOD {float(row['ood-accuracy']):.4f} ID {float(row['id-accuracy']):.4f} | "
                          f"{progress.add(spec, 1)}")
            shown = len(rows)

        progress.skip(spec, before)  # rounds an interrupted attempt already made: not this grid's pace
        run_id = runtime.cli.submit(app_dir(self.app), self.run_config(spec, resume),
                                    runtime.resources.federation_config(spec.clients))
        self.echo(f"{tag} {spec.name}: run {run_id} {'resumed after round ' + str(before) if resume else 'started'}")
        try:
            outcome = runtime.cli.wait(run_id, self.run_timeout, poll=30.0, on_poll=report,
                                       check_now=folder.summary.exists)
            ended, completed = f"{outcome.status} {outcome.details}", outcome.completed
        except (TimeoutError, RuntimeError) as err:  # past run_timeout, or its status unreadable
            runtime.cli.stop_run(run_id)
            ended, completed = str(err), False
        report()
        progress.skip(spec, spec.rounds - shown, ended=True)  # a failed run's rounds are not coming
        if completed and self.is_finished(spec):
            updated = [row.get("model-updated", "") for row in folder.rows() if row["round"] != "0"]
            if not updated or any(value != "0" for value in updated):
                made = json.dumps({**made_by, "resumed": resume}, indent=2).encode()
                atomic_write(folder.path / MADE_FILE, lambda f: f.write(made))
                return True
            # Every round failed (e.g. every client's training raised), yet the run ended: its
            # folder is moved aside, so the grid neither counts it nor skips it next time.
            aside = folder.path.with_name(f"{folder.path.name}.no-update-{time.strftime('%Y%m%dT%H%M%S')}")
            folder.path.rename(aside)
            ended = f"no round updated the model: every reply failed; the run is kept in {aside}"
        log = self._save_log(runtime, run_id, spec)
        self.echo(f"{tag} {spec.name}: FAILED ({ended}); {log}")
        return False

    def _save_log(self, runtime: SimulationRuntime, run_id: int, spec: RunSpec) -> str:
        """Keep Flower's log of a failed run (the ServerApp's and the clients' errors are there,
        not in the SuperLink's log); where it is, and its last error line."""
        path = self.results_dir / "runtime" / "failed" / f"{spec.name}.log"
        try:
            text = runtime.cli.logs(run_id)
        except (OSError, subprocess.SubprocessError) as err:
            return f"Flower's log could not be read ({err}); SuperLink log: {runtime.workdir / 'superlink.log'}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        errors = [line.strip() for line in text.splitlines() if "Error" in line or "Exception" in line]
        return f"Flower's log of the run: {path}" + (f" (last error: {errors[-1][:300]})" if errors else "")


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, e.g. a batch system's allocation)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _check_machine(resources: SimulationResources, host: HostSettings) -> None:
    """Refuse, before any run starts, resources that would make every run fail (a client that
    cannot be placed, or cannot train where it is told to)."""
    device = host.device or ""
    if resources.joins_cluster:
        if host.device is not None:
            raise ValueError("--device does not reach a Ray cluster's clients: each host's Ray workers take "
                             "FEDGMA_DEVICE (and FEDGMA_DATA_DIR) from that host's `ray start`")
        return
    if resources.ray_cpus is not None and resources.ray_cpus < resources.client_cpus:
        raise ValueError(f"each job's Ray has {resources.ray_cpus} CPU(s), fewer than the {resources.client_cpus} "
                         "each client reserves: fewer --jobs or --client-cpus")
    if resources.client_gpus or device.startswith("cuda"):
        import torch

        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if resources.client_gpus and not gpus:
            raise ValueError(f"--client-gpus {resources.client_gpus:g}: this machine has no GPU for Ray to give "
                             "its clients")
        if device.startswith("cuda") and not resources.client_gpus:
            raise ValueError(f"--device {device} needs --client-gpus above 0: Ray hides the GPUs from clients "
                             "given none")


class _Stopped(Exception):
    """A job's run was stopped because the grid was interrupted."""


class _Progress:
    """Rounds made across a grid's runs (one or several at once) and the time left: planned at the
    finished runs' pace, as ``grid status`` plans it, where the grid has finished a run; else at
    this invocation's own rate."""

    def __init__(self, todo: Sequence[RunSpec], made: Pace | None = None) -> None:
        self.rounds = sum(spec.rounds for spec in todo)
        self.done = 0
        self.per_round = {spec.name: _per_round(spec, made) for spec in todo} if made is not None else None
        self.planned = (sum(spec.rounds * self.per_round[spec.name] for spec in todo)
                        + START_UP_SECONDS * len(todo)) if self.per_round is not None else 0.0
        self.started = time.monotonic()
        self.lock = threading.Lock()

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def _plan_less(self, spec: RunSpec, rounds: int, start_up: bool = False) -> None:
        if self.per_round is not None:
            self.planned -= rounds * self.per_round.get(spec.name, 0.0) + (START_UP_SECONDS if start_up else 0.0)

    def skip(self, spec: RunSpec, rounds: int, *, ended: bool = False) -> None:
        """Leave ``rounds`` of ``spec`` out of the rounds to make (made before, or never coming);
        ``ended``: the run is over, its start-up no longer to come either."""
        with self.lock:
            self.rounds -= rounds
            self._plan_less(spec, rounds, start_up=ended)

    def add(self, spec: RunSpec, rounds: int) -> str:
        """Count ``rounds`` more of ``spec`` made; the elapsed and remaining time as text."""
        with self.lock:
            self.done += rounds
            self._plan_less(spec, rounds)
            if not self.done:
                return ""
            elapsed = self.elapsed()
            if self.per_round is not None:
                left = f"remaining ~{format_seconds(max(0.0, self.planned))} at the finished runs' pace"
            else:
                left = f"remaining ~{format_seconds(elapsed / self.done * max(0, self.rounds - self.done))}"
            return f"elapsed {format_seconds(elapsed)}, {left}"


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

