"""The experiment command end to end: the smoke grid through Flower's simulation runtime,
resumed, made again two runs at once (interrupted and resumed), then reported (the reduced form
of the quick and full grids)."""

import csv
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from run_settings import ROOT

from fedgma import cli
from fedgma.app.run_folder import RunFolder
from fedgma.deployment.processes import alive, command_line, descendants, parent
from fedgma.lab.experiments.runner import metrics_differences

pytestmark = pytest.mark.e2e


def test_smoke_grid_runs_resumes_and_reports(tmp_path, shared_data_dir, capsys):
    results = tmp_path / "smoke"
    data = ["--data-dir", str(shared_data_dir), "--no-download"]
    assert cli.main(["grid", "run", "smoke", "--results-dir", str(results), *data]) == 0
    printed = capsys.readouterr().out
    assert "5 to run" in printed and "round 2/2" in printed and "remaining ~" in printed
    runs = sorted(p.name for p in (results / "runs").iterdir())
    assert runs == ["binary-non-iid_fedavg-c0.001_seed0", "binary-non-iid_fedavg_seed0",
                    "binary-non-iid_ws-lr1-c0.001_seed0", "binary-non-iid_ws-lr1-tau0_seed0",
                    "binary-non-iid_ws-lr1_seed0"]
    for run in runs:
        summary = json.loads((results / "runs" / run / "summary.json").read_text())
        assert summary["rounds"] == 2
        made = json.loads((results / "runs" / run / "made.json").read_text())  # how: one at a time, a private Ray
        assert (made["jobs"], made["ray-address"], made["client-cpus"], made["resumed"]) == (1, "local", 1, False)
    with (results / "results.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 5 * 3  # rounds 0, 1, 2 of every run
    assert {r["strategy"] for r in rows} == {"FedAvg", "FedGMA ws, eta_s=1", "FedAvg, server step 2 (no mask)"}
    assert {(r["run"].endswith("c0.001_seed0"), r["client-lr"]) for r in rows} == {(True, "0.001"), (False, "0.01")}
    control = json.loads((results / "runs" / "binary-non-iid_ws-lr1-tau0_seed0" / "config.json").read_text())
    assert (control["strategy"], control["variant"], control["tau"], control["server_lr"]) == ("fedgma", "ws", 0.0, 1.0)
    assert all(r["dataset"] == "fashion-mnist" for r in rows)
    summaries_before = {r: (results / "runs" / r / "summary.json").stat().st_mtime_ns for r in runs}

    # Resume: nothing is re-run.
    assert cli.main(["grid", "run", "smoke", "--results-dir", str(results), *data]) == 0
    assert "5 already finished, 0 to run" in capsys.readouterr().out
    assert {r: (results / "runs" / r / "summary.json").stat().st_mtime_ns for r in runs} == summaries_before

    # Two runs at once, each its own simulation and Ray, stopped (SIGTERM) as soon as both have
    # started and then resumed: the grid ends at once, and the metrics are those of one run at a time.
    parallel, pair = tmp_path / "parallel", runs[1:3]
    at_once = ["grid", "run", "smoke", "--results-dir", str(parallel), "--jobs", "2", "--runs", ",".join(pair), *data]
    grid = subprocess.Popen([sys.executable, "-m", "fedgma", *at_once], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    started: dict[int, str] = {}
    parents: dict[int, int | None] = {}

    def watch():  # every process the grid starts, by its latest command line (one seen between fork and exec
        while grid.poll() is None:  # still shows its parent's), until the grid exits
            for pid in descendants(grid.pid):
                started[pid] = command_line(pid) or started.get(pid, "")
                if pid not in parents:
                    parents[pid] = parent(pid)
            time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    seen = []
    while sum(": run " in line for line in seen) < 2:
        line = grid.stdout.readline()
        assert line, "".join(seen)
        seen.append(line)
    time.sleep(3)  # their simulations start
    grid.send_signal(signal.SIGTERM)
    assert grid.wait(timeout=180) == 143, "".join(seen) + grid.stdout.read()
    seen.append(grid.stdout.read())  # what it printed while stopping
    watcher.join()
    grid.stdout.close()
    assert any("flwr-simulation" in line for line in started.values()), started
    # Both jobs' SuperLinks have ended, and with them everything they started, a simulation that
    # Flower's SuperExec launched while being stopped (orphaned, it held its run folder) included.
    # A SuperLink's child killed between fork and exec never shows its own command line: not counted.
    superlinks = [pid for pid, line in started.items()
                  if "flower-superlink" in line and "flower-superlink" not in started.get(parents.get(pid) or 0, "")]
    assert len(superlinks) == 2, started
    left = {pid: Path(f"/proc/{pid}/status").read_text()[:400] for pid in started if alive(pid)}
    assert not left, (left, {pid: started[pid] for pid in left}, "".join(seen))
    assert cli.main(at_once) == 0
    printed = capsys.readouterr().out
    assert "2 runs (2 of 5 named), 0 already finished, 2 to run" in printed  # stopped before they ended
    assert "2 runs at once, each with a private Ray (" in printed and "runs per hour, 2 at once" in printed
    assert printed.count(" round 2/2 ") == 2  # each run's progress
    for run in pair:
        one_by_one, both = (RunFolder.at(folder / "runs", "", run) for folder in (results, parallel))
        assert metrics_differences(one_by_one, both) == []
    assert all((parallel / "runtime" / f"job-{n}" / "superlink.log").is_file() for n in (1, 2))
    assert sorted(p.name for p in (parallel / "runs").iterdir()) == sorted(pair)
    for run in pair:  # finished two at once, each job's Ray given its share of the cores
        made = json.loads((parallel / "runs" / run / "made.json").read_text())
        assert made["jobs"] == 2 and made["ray-cpus"] >= 1

    # A grid over the same directory with a setting that changes results is refused.
    assert cli.main(["grid", "run", "smoke", "--results-dir", str(results), *data, "label-noise=0.1"]) == 2
    assert "label-noise" in capsys.readouterr().err

    assert cli.main(["report", str(results)]) == 0
    text = (results / "report.md").read_text()
    assert "| FedGMA ws, eta_s=1 | 1 |" in text and "colored fashion-mnist" in text
    assert "**Does the mask matter? Client step 0.01**" in text and "the paper's client step 0.001" in text
    for figure in ("figure2.png", "baselines.png", "client_step.png"):
        assert (results / "figures" / figure).stat().st_size > 10_000

