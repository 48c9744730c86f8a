"""The README's main job (fedgma demo), at a small size."""

import json

import pytest

from fedgma import cli

pytestmark = pytest.mark.e2e


def test_main_job_compares_fedgma_and_fedavg(tmp_path, shared_data_dir, capsys):
    status = cli.main([
        "demo", "--clients", "2", "--rounds", "1", "--output-dir", str(tmp_path),
        "--data-dir", str(shared_data_dir), "--no-download",
        "train-images=2000", "test-images=1000", "partitioning=iid", "local-epochs=1",
    ])
    printed = capsys.readouterr().out
    assert status == 0, printed
    assert "FedGMA (ws)" in printed and "FedAvg" in printed and "final OOD acc" in printed
    (batch,) = tmp_path.glob("demo-*")
    for name in ("fedgma-ws", "fedavg"):
        summary = json.loads((batch / name / "summary.json").read_text())
        assert summary["rounds"] == 1
        assert f"{summary['final-ood-accuracy']:.4f}" in printed
    # The last line names both runs' metrics files, as paths a shell can use.
    named = printed.splitlines()[-1].removeprefix("Per-round metrics: ").split(" and ")
    assert named == [str(batch / name / "metrics.csv") for name in ("fedgma-ws", "fedavg")]


def test_main_job_reports_a_failed_run_and_exits_non_zero(tmp_path, shared_data_dir, capsys):
    status = cli.main([
        "demo", "--clients", "2", "--rounds", "6", "--output-dir", str(tmp_path),
        "--data-dir", str(shared_data_dir), "--no-download",
        "train-images=1000", "test-images=500", "local-epochs=1", "client-lr=1e6",
    ])
    captured = capsys.readouterr()
    assert status == 1, captured.out
    assert "ended finished:failed" in captured.err and "without a model update" in captured.err
    assert "final OOD acc" not in captured.out  # no results table for a run that failed
