"""Where a deployed round's time goes (``fedgma bench --parts deployment``).

The same FedGMA run, deployed (``fedgma superlink`` and N ``flower-supernode`` processes
over gRPC on loopback) and on Flower's simulation runtime, each with the round loop
waiting as before this project polled for replies itself (``reply-poll-interval = 0``:
Flower's ``Grid.send_and_receive``, every 3 s deployed and 0.1 s simulated) and as now
(the default interval). Every round is split into the parts of :data:`ROUND_PARTS` from the
rows of ``metrics.csv``; clients' parts are means over the round's clients.

Whose each part is (Flower's polling, process starts and uploads, or ours) is in the
:data:`ROUND_PARTS` table and, explained, in the README's "Where a deployed round's time goes".
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from itertools import product
from pathlib import Path

from fedgma.app.run_folder import RunFolder

# (label, whose): the additive parts of a round, in the order they happen.
ROUND_PARTS = (
    ("SuperNode pull wait (instruction made -> ClientApp started)", "Flower"),
    ("ClientApp process start-up (interpreter, imports)", "Flower; our imports"),
    ("client set-up and local training", "ours (the task)"),
    ("server's wait after the last training reply was made", "Flower's upload + our poll"),
    ("rest of the training wait (slowest client vs the mean)", ""),
    ("aggregation", "ours"),
    ("client evaluation until its last reply was made", "Flower + ours"),
    ("server's wait after the last evaluation reply was made", "Flower's upload + our poll"),
    ("central evaluation", "ours"),
    ("other (checkpoint, metrics row, logging)", "ours"),
)

MODES = ("simulated", "deployed")
LOOPS = {"before": 0.0, "after": None}  # reply-poll-interval; None: the app's default


def _mean(rows: list[dict[str, str]], key: str) -> float:
    values = [float(r[key]) for r in rows if r.get(key) not in (None, "")]
    return statistics.fmean(values) if values else 0.0


def round_parts(rows: list[dict[str, str]]) -> dict[str, float]:
    """Mean seconds of each part of :data:`ROUND_PARTS` over ``rows`` (metrics.csv rows), and
    ``"round"``. The parts add up to the round: the two rests are what is left."""
    round_s = _mean(rows, "round-seconds")
    train_wait, eval_wait = _mean(rows, "train-wait-seconds"), _mean(rows, "client-eval-wait-seconds")
    train_lag, eval_lag = _mean(rows, "train-reply-lag-seconds"), _mean(rows, "client-eval-reply-lag-seconds")
    client = [_mean(rows, "pull-wait-seconds"), _mean(rows, "clientapp-start-seconds"),
              _mean(rows, "setup-seconds") + _mean(rows, "train-seconds")]
    aggregate, central = _mean(rows, "aggregate-seconds"), _mean(rows, "central-eval-seconds")
    seconds = [*client, train_lag, train_wait - sum(client) - train_lag, aggregate, eval_wait - eval_lag,
               eval_lag, central, round_s - train_wait - aggregate - eval_wait - central]
    return {**{label: value for (label, _), value in zip(ROUND_PARTS, seconds, strict=True)}, "round": round_s}


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process (all its threads, not its children)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Measured:
    """One run's mean round parts and the SuperLink's CPU (share of one core, deployed only)."""

    parts: dict[str, float]
    rounds: int
    superlink_cpu: float | None = None


def metrics_rows(folder: RunFolder, first_round: int) -> list[dict[str, str]]:
    """The rows of a run's ``metrics.csv`` from round ``first_round`` on."""
    return [r for r in folder.rows() if int(r["round"]) >= first_round]


def _config(rounds: int, supernodes: int, poll: float | None, run_name: str) -> dict[str, object]:
    """The benchmark's run settings (``poll`` None: the app's default interval)."""
    config: dict[str, object] = {
        "num-server-rounds": rounds + 1,  # round 1 builds each client's partition cache: left out
        "strategy": "fedgma", "variant": "ws", "min-nodes": supernodes, "num-partitions": supernodes,
        "fraction-evaluate": 1.0, "train-images": 500 * supernodes, "test-images": 2000,
        "partitioning": "iid", "run-name": run_name,
    }
    if poll is not None:
        config["reply-poll-interval"] = poll
    return config


def measure(app: Path, rounds: int = 5, repeats: int = 2, supernodes: int = 3, idle_seconds: float = 20.0
            ) -> tuple[dict[tuple[str, str], Measured], float]:
    """Run each combination of :data:`MODES` and :data:`LOOPS` ``repeats`` times (before and
    after alternating, so that a drifting machine weighs on both alike), ``rounds`` measured
    rounds each; their mean round parts, and the SuperLink's CPU (share of one core) with the
    SuperNodes connected and no run."""
    from fedgma.deployment.flower import FlowerCli, HostSettings, SimulationRuntime
    from fedgma.deployment.local import LocalDeployment

    rows: dict[tuple[str, str], list[dict[str, str]]] = {key: [] for key in product(MODES, LOOPS)}
    superlink_cpu: dict[str, list[float]] = {loop: [0.0, 0.0] for loop in LOOPS}  # CPU seconds, wall seconds
    threads = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # what a simulation worker gets

    def run(cli: FlowerCli, mode: str, loop: str, repeat: int, federation: str | None = None) -> None:
        name = f"{mode}-{loop}-{repeat}"
        outcome = cli.wait(cli.submit(app, _config(rounds, supernodes, LOOPS[loop], name), federation),
                           timeout=3600, poll=10.0)
        if not outcome.completed:
            raise RuntimeError(f"benchmark run {name} ended {outcome.status}: {outcome.details}")
        rows[mode, loop] += metrics_rows(RunFolder.at(root, "", name), 2)  # round 1 builds the caches

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        host = HostSettings(output_root=root, download=False)
        runtime = SimulationRuntime(root / "simulation", host)
        runtime.env.update(threads)
        with runtime:
            for repeat, loop in product(range(repeats), LOOPS):
                run(runtime.cli, "simulated", loop, repeat, f"num-supernodes={supernodes} client-resources-num-cpus=1")
        deployment = LocalDeployment(root / "deployment", supernodes, settings=host)
        deployment.env.update(threads)
        with deployment:
            deployment.wait_for_supernodes(timeout=300)
            assert deployment.superlink is not None
            pid = deployment.superlink.pid
            time.sleep(5.0)  # start-up settles
            cpu, started = process_cpu_seconds(pid), time.monotonic()
            time.sleep(idle_seconds)
            idle = (process_cpu_seconds(pid) - cpu) / (time.monotonic() - started)
            for repeat, loop in product(range(repeats), LOOPS):
                cpu, started = process_cpu_seconds(pid), time.monotonic()
                run(deployment.cli, "deployed", loop, repeat)
                superlink_cpu[loop][0] += process_cpu_seconds(pid) - cpu
                superlink_cpu[loop][1] += time.monotonic() - started
    return {(mode, loop): Measured(round_parts(found), len(found),
                                   superlink_cpu[loop][0] / superlink_cpu[loop][1] if mode == "deployed" else None)
            for (mode, loop), found in rows.items()}, idle


def table(results: dict[tuple[str, str], Measured], idle_cpu: float) -> list[str]:
    """The parts, seconds and share of the round, for each mode before and after; then the
    deployed / simulated ratio and the SuperLink's CPU (``idle_cpu``: without a run)."""
    columns = [(mode, loop) for mode in MODES for loop in LOOPS]
    lines = ["| part of a round | whose | " + " | ".join(f"{mode}, {loop}" for mode, loop in columns) + " |",
             "|---|---|" + "---|" * len(columns)]
    for label, whose in ROUND_PARTS:
        cells = []
        for column in columns:
            parts = results[column].parts
            cells.append(f"{parts[label]:.2f} s ({100 * parts[label] / parts['round']:.0f} %)")
        lines.append(f"| {label} | {whose} | " + " | ".join(cells) + " |")
    lines.append("| **round** (mean) | | " + " | ".join(
        f"**{results[c].parts['round']:.2f} s** ({results[c].rounds} rounds)" for c in columns) + " |")
    lines.append("")
    for loop in LOOPS:
        ratio = results["deployed", loop].parts["round"] / results["simulated", loop].parts["round"]
        cpu = results["deployed", loop].superlink_cpu
        lines.append(f"- {loop}: deployed / simulated round time **{ratio:.2f}**; the SuperLink process used "
                     f"{100 * (cpu or 0.0):.1f} % of one core over the deployed run (without a run, the "
                     f"SuperNodes connected: {100 * idle_cpu:.1f} %).")
    before, after = results["deployed", "before"].parts["round"], results["deployed", "after"].parts["round"]
    lines.append(f"- deployed round time after / before: **{after / before:.2f}** "
                 f"({before - after:+.2f} s per round).")
    return lines


def client_import_seconds(source: Path, repeats: int = 7) -> tuple[float, float]:
    """Median seconds, over ``repeats`` fresh interpreters, of importing flwr's ClientApp
    API and torch, and then of importing the client app of the ``fedgma`` package in
    ``source`` on top (its own cost)."""
    code = ("import time; t = time.perf_counter(); import flwr.app, flwr.clientapp, torch; "
            "b = time.perf_counter(); import fedgma.app.client_app; "
            "print(b - t, time.perf_counter() - b)")
    env = {**os.environ, "PYTHONPATH": str(source)}  # ahead of any installed fedgma
    base, ours = [], []
    with tempfile.TemporaryDirectory() as cwd:  # not a folder holding another fedgma
        for _ in range(repeats):
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                 env=env, cwd=cwd)
            first, second = out.stdout.split()
            base.append(float(first))
            ours.append(float(second))
    return statistics.median(base), statistics.median(ours)


def import_table(app: Path, before_revision: str | None, repeats: int = 7) -> list[str]:
    """Our client app's import cost beyond flwr and torch, in the checkout ``app`` now and at
    ``before_revision`` (a git revision of it; skipped when git or the revision is missing)."""
    base, ours = client_import_seconds(app, repeats)
    lines = ["| client app | flwr + torch s | our client app on top s |", "|---|---|---|",
             f"| this tree | {base:.3f} | {ours:.3f} |"]
    if before_revision:
        with tempfile.TemporaryDirectory() as tmp:
            archive = subprocess.run(["git", "-C", str(app), "archive", before_revision, "fedgma"],
                                     capture_output=True)
            if archive.returncode == 0:
                subprocess.run(["tar", "-x", "-C", tmp], input=archive.stdout, check=True)
                old_base, old_ours = client_import_seconds(Path(tmp), repeats)
                lines.append(f"| `{before_revision}` (before) | {old_base:.3f} | {old_ours:.3f} |")
            else:
                lines.append(f"| `{before_revision}` (before) | not in this clone | |")
    return lines
