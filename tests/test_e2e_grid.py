"""The experiment command end to end: the smoke grid through Flower's simulation runtime,
resumed, then reported (the reduced form of the quick and full grids)."""

import csv
import json

import pytest

from fedgma.lab import cli

pytestmark = pytest.mark.e2e


def test_smoke_grid_runs_resumes_and_reports(tmp_path, shared_data_dir, capsys):
    results = tmp_path / "smoke"
    data = ["--data-dir", str(shared_data_dir), "--no-download"]
    assert cli.main(["grid", "run", "smoke", "--results-dir", str(results), *data]) == 0
    printed = capsys.readouterr().out
    assert "2 to run" in printed and "round 2/2" in printed and "remaining ~" in printed
    runs = sorted(p.name for p in (results / "runs").iterdir())
    assert runs == ["binary-non-iid_fedavg_seed0", "binary-non-iid_ws-lr1_seed0"]
    for run in runs:
        summary = json.loads((results / "runs" / run / "summary.json").read_text())
        assert summary["rounds"] == 2
    with (results / "results.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 2 * 3  # rounds 0, 1, 2 of both runs
    assert {r["strategy"] for r in rows} == {"FedAvg", "FedGMA ws, eta_s=1"}
    assert all(r["dataset"] == "fashion-mnist" for r in rows)
    summaries_before = {r: (results / "runs" / r / "summary.json").stat().st_mtime_ns for r in runs}

    # Resume: nothing is re-run.
    assert cli.main(["grid", "run", "smoke", "--results-dir", str(results), *data]) == 0
    assert "2 already finished, 0 to run" in capsys.readouterr().out
    assert {r: (results / "runs" / r / "summary.json").stat().st_mtime_ns for r in runs} == summaries_before

    # A grid over the same directory with a setting that changes results is refused.
    assert cli.main(["grid", "run", "smoke", "--results-dir", str(results), *data, "label-noise=0.1"]) == 2
    assert "label-noise" in capsys.readouterr().err

    assert cli.main(["report", str(results)]) == 0
    text = (results / "report.md").read_text()
    assert "| FedGMA ws, eta_s=1 | 1 |" in text and "colored fashion-mnist" in text
    for figure in ("figure2.png", "baselines.png"):
        assert (results / "figures" / figure).stat().st_size > 10_000
