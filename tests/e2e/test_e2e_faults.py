"""Faults injected into real Flower processes: a ServerApp killed and its run resumed
(simulation), a SuperNode killed mid-round (deployment on loopback)."""

import csv
import json
import time

import numpy as np
import pytest
import torch
from run_settings import ROOT

from fedgma.deployment.flower import SimulationRuntime
from fedgma.deployment.local import LocalDeployment
from fedgma.deployment.processes import kill_tree, processes_named

pytestmark = pytest.mark.e2e

SMALL = {"train-images": 1000, "test-images": 500, "local-epochs": 1}


def checkpoint_round(run_dir):
    try:
        with np.load(run_dir / "checkpoint.npz", allow_pickle=False) as data:
            return json.loads(str(data["meta"]))["round"]
    except (OSError, KeyError, ValueError):
        return -1


def rows(run_dir):
    with (run_dir / "metrics.csv").open() as handle:
        return list(csv.DictReader(handle))


def test_serverapp_killed_after_round_two_resumes_to_identical_weights(tmp_path, host_settings):
    out = host_settings.output_root
    settings = {**SMALL, "num-server-rounds": 4, "strategy": "fedgma", "variant": "ws", "seed": 5,
                "partitioning": "iid", "num-partitions": 2}
    federation = "num-supernodes=2 client-resources-num-cpus=1"
    with SimulationRuntime(tmp_path / "runtime", host_settings) as runtime:
        whole = runtime.cli.submit(ROOT, {**settings, "run-name": "whole"}, federation)
        assert runtime.cli.wait(whole, timeout=600).completed

        runtime.cli.submit(ROOT, {**settings, "run-name": "broken"}, federation)
        deadline = time.monotonic() + 600
        while checkpoint_round(out / "broken") < 2:
            assert time.monotonic() < deadline, "round 2 never completed"
            time.sleep(0.2)
        (simulation,) = processes_named(runtime.process.pid, "flwr-simulation")
        kill_tree(simulation)  # the ServerApp (and its simulated clients) die after round 2
        killed_at = checkpoint_round(out / "broken")
        assert 2 <= killed_at < 4
        assert not (out / "broken" / "summary.json").exists()

        resumed = runtime.cli.submit(ROOT, {**settings, "run-name": "broken", "resume": "broken"}, federation)
        outcome = runtime.cli.wait(resumed, timeout=600)
        logs = runtime.cli.logs(resumed)
    assert outcome.completed, f"{outcome.status}: {outcome.details}\n{logs[-3000:]}"
    assert f"resuming after round {killed_at}" in logs
    assert [int(r["round"]) for r in rows(out / "broken")] == [0, 1, 2, 3, 4]
    final_whole = torch.load(out / "whole" / "final_model.pt")
    final_resumed = torch.load(out / "broken" / "final_model.pt")
    assert final_whole.keys() == final_resumed.keys()
    for name, tensor in final_whole.items():
        assert torch.equal(tensor, final_resumed[name]), name  # bit-identical
    for a, b in zip(rows(out / "whole"), rows(out / "broken"), strict=True):
        assert a["ood-accuracy"] == b["ood-accuracy"] and a["train-loss"] == b["train-loss"]


def test_supernode_killed_mid_round_costs_at_most_the_round_timeout(tmp_path, host_settings):
    out = host_settings.output_root
    # Round 1 must see all 3 replies: at 30 s, on a machine busy with other runs, its ClientApps'
    # start-up (torch, the data) once took longer and every reply timed out.
    timeout = 60.0
    with LocalDeployment(tmp_path / "deployment", num_supernodes=3, settings=host_settings) as deployment:
        deployment.wait_for_supernodes()
        run_id = deployment.cli.submit(ROOT, {
            **SMALL, "num-server-rounds": 3, "min-nodes": 2, "round-timeout": timeout,
            "partitioning": "iid", "num-partitions": 3, "run-name": "dead-node",
        })
        deadline = time.monotonic() + 600
        while checkpoint_round(out / "dead-node") < 1:
            assert time.monotonic() < deadline, "round 1 never completed"
            time.sleep(0.2)
        time.sleep(1.0)  # round 2 has been sent out
        victim = deployment.supernodes[2]
        kill_tree(victim.pid)
        killed = time.monotonic()
        outcome = deployment.cli.wait(run_id, timeout=600)
        finished = time.monotonic()
        superlink_log = deployment.superlink_log.read_text(errors="replace")
    assert outcome.completed, f"{outcome.status}: {outcome.details}\n{superlink_log[-3000:]}"
    table = rows(out / "dead-node")
    assert [int(r["round"]) for r in table] == [0, 1, 2, 3]
    assert int(table[1]["replies-used"]) == 3
    round_two = table[2]
    assert int(round_two["replies-used"]) == 2
    assert int(round_two["replies-timed-out"]) + int(round_two["replies-failed"]) == 1
    assert int(round_two["model-updated"]) == 1
    print(f"round seconds: {[r['round-seconds'] for r in table]}, killed-to-finished {finished - killed:.1f} s")
    # The dead node costs at most the round timeout (plus the round's own work) per round.
    assert float(round_two["round-seconds"]) <= timeout + 20
    assert finished - killed <= 2 * timeout + 60
