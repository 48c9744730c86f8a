"""End to end on Flower's simulation runtime: a real `flwr run` of this app."""

import csv
import json

import pytest
import torch

from fedgma.launch import SimulationRuntime
from fedgma.task.model import build_model
from run_settings import ROOT

pytestmark = pytest.mark.e2e


def read_rows(path):
    with path.open() as handle:
        return list(csv.DictReader(handle))


def test_two_clients_two_rounds_write_metrics_and_model(tmp_path, shared_data_dir):
    out = tmp_path / "outputs"
    with SimulationRuntime(tmp_path / "runtime") as runtime:
        run_id = runtime.cli.submit(
            ROOT,
            {
                "num-server-rounds": 2,
                "strategy": "fedgma",
                "variant": "gma",
                "partitioning": "iid",
                "train-images": 2000,
                "test-images": 1000,
                "fraction-evaluate": 1.0,
                "data-dir": str(shared_data_dir),
                "download": False,
                "output-dir": str(out),
                "run-name": "e2e-sim",
            },
            "num-supernodes=2",
        )
        outcome = runtime.cli.wait(run_id, timeout=600)
    assert outcome.completed, f"{outcome.status}: {outcome.details}"

    run_dir = out / "e2e-sim"
    rows = read_rows(run_dir / "metrics.csv")
    assert [int(r["round"]) for r in rows] == [0, 1, 2]
    for row in rows[1:]:
        assert 0.0 <= float(row["mask-kept-fraction"]) <= float(row["mask-mean"]) <= 1.0
        assert int(row["replies-used"]) == 2
        assert row["client-eval-accuracy"] != ""
        assert 0.0 <= float(row["ood-accuracy"]) <= 1.0
        # The round's parts are timed; a simulated ClientApp has no process of its own.
        assert float(row["train-seconds"]) > 0 and float(row["setup-seconds"]) >= 0
        assert float(row["train-wait-seconds"]) >= float(row["train-seconds"])
        assert 0 < float(row["aggregate-seconds"]) < float(row["round-seconds"])
        assert 0 < float(row["central-eval-seconds"]) < float(row["round-seconds"])
        assert float(row["client-eval-wait-seconds"]) > 0  # fraction-evaluate=1
        assert row["clientapp-start-seconds"] == ""
    # Two rounds of SGD on an IID split must beat chance in distribution.
    assert float(rows[-1]["id-accuracy"]) > 0.6

    state = torch.load(run_dir / "final_model.pt")
    model = build_model(2)
    model.load_state_dict(state)  # the saved weights fit the model
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["rounds"] == 2
    config = json.loads((run_dir / "config.json").read_text())
    assert config["run-id"] == run_id and config["variant"] == "gma"


def test_bad_config_or_missing_data_fail_before_round_one(tmp_path, shared_data_dir):
    out = tmp_path / "outputs"
    empty = tmp_path / "no-data"
    empty.mkdir()
    with SimulationRuntime(tmp_path / "runtime") as runtime:
        bad_tau = runtime.cli.submit(
            ROOT,
            {"tau": 1.7, "output-dir": str(out), "data-dir": str(shared_data_dir), "run-name": "bad"},
            "num-supernodes=2",
        )
        no_data = runtime.cli.submit(
            ROOT,
            {"dataset": "mnist", "download": False, "output-dir": str(out), "data-dir": str(empty),
             "run-name": "no-data"},
            "num-supernodes=2",
        )
        bad_tau_outcome = runtime.cli.wait(bad_tau, timeout=300)
        no_data_outcome = runtime.cli.wait(no_data, timeout=300)
        bad_tau_log = runtime.cli.logs(bad_tau)
    assert bad_tau_outcome.status == "finished:failed"
    assert "'tau' must be <= 1.0" in bad_tau_log
    assert no_data_outcome.status == "finished:failed"
    assert "mnist not found" in no_data_outcome.details and "download=true" in no_data_outcome.details
    assert not out.exists(), "nothing may be written before round 1"
