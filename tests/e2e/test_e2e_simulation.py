"""End to end on Flower's simulation runtime: a real `flwr run` of this app."""

import csv
import json

import pytest
import torch
from run_settings import ROOT

from fedgma.app.task.colored.model import build_model
from fedgma.deployment.flower import HostSettings, SimulationRuntime

pytestmark = pytest.mark.e2e


def read_rows(path):
    with path.open() as handle:
        return list(csv.DictReader(handle))


def test_two_clients_two_rounds_write_metrics_and_model(tmp_path, host_settings):
    out = host_settings.output_root
    with SimulationRuntime(tmp_path / "runtime", host_settings) as runtime:
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
        # The server computed each partition's size itself: the honest claims agree with it.
        assert int(row["replies-corrected"]) == 0 and float(row["update-norm"]) > 0
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


def test_bad_config_or_missing_data_fail_before_round_one(tmp_path):
    out = tmp_path / "outputs"
    empty = tmp_path / "no-data"
    empty.mkdir()
    host = HostSettings(output_root=out, data_dir=empty, download=False)
    runs = {
        "bad-tau": {"tau": 1.7},
        "no-data": {"dataset": "mnist"},
        # A run may not write outside the server's output root.
        "absolute": {"output-dir": str(tmp_path / "elsewhere")},
        "dotdot": {"resume": "../../etc"},
    }
    with SimulationRuntime(tmp_path / "runtime", host) as runtime:
        ids = {name: runtime.cli.submit(ROOT, {**config, "run-name": name}, "num-supernodes=2")
               for name, config in runs.items()}
        outcomes = {name: runtime.cli.wait(run_id, timeout=300) for name, run_id in ids.items()}
        bad_tau_log = runtime.cli.logs(ids["bad-tau"])
        # Where a node keeps its data is the node's setting: Flower refuses a key the app does not have.
        with pytest.raises(RuntimeError, match="Invalid run configuration"):
            runtime.cli.submit(ROOT, {"data-dir": "/etc", "run-name": "data-dir"}, "num-supernodes=2")
    assert all(outcome.status == "finished:failed" for outcome in outcomes.values()), outcomes
    assert "'tau' must be <= 1.0" in bad_tau_log
    details = {name: outcome.details for name, outcome in outcomes.items()}
    assert "mnist not found" in details["no-data"] and "download=true" in details["no-data"]
    for name, key in (("absolute", "output-dir"), ("dotdot", "resume")):
        assert f"'{key}' must be a relative path below the server's output root" in details[name], details[name]
    assert not out.exists(), "nothing may be written before round 1"
    assert not (tmp_path / "elsewhere").exists()


def test_a_run_that_diverges_ends_failed_with_the_cause_and_its_resume_says_so(tmp_path, host_settings):
    """A client step of 10^6 drives the model to constant predictions in round 1; from then on
    every update is zero. The run ends finished:failed after 3 such rounds, naming why; the rows
    of the rounds made are kept; resuming it says the run had failed."""
    settings = {"num-server-rounds": 8, "client-lr": 1e6, "partitioning": "non-iid", "train-images": 1000,
                "test-images": 500, "local-epochs": 1, "run-name": "diverged"}
    with SimulationRuntime(tmp_path / "runtime", host_settings) as runtime:
        first = runtime.cli.wait(runtime.cli.submit(ROOT, settings, "num-supernodes=2"), timeout=600, poll=2.0)
        resumed_id = runtime.cli.submit(ROOT, {**settings, "resume": "diverged"}, "num-supernodes=2")
        resumed = runtime.cli.wait(resumed_id, timeout=600, poll=2.0)
        resumed_log = runtime.cli.logs(resumed_id)
    assert first.status == "finished:failed", first
    assert "3 rounds in a row without a model update (rounds 2-4" in first.details
    assert "every update was zero" in first.details
    run_dir = host_settings.output_root / "diverged"
    rows = read_rows(run_dir / "metrics.csv")  # the first run's rounds 0-4, the resumed run's round 5
    assert [int(r["round"]) for r in rows] == [0, 1, 2, 3, 4, 5]
    assert [r["model-updated"] for r in rows[1:]] == ["1", "0", "0", "0", "0"]
    assert not (run_dir / "summary.json").exists() and not (run_dir / "final_model.pt").exists()
    assert resumed.status == "finished:failed" and "ended failed after round 4" in resumed_log
    assert "rounds 2-5" in resumed.details  # still stalled: one more round was enough to stop it
