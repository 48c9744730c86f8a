"""The process helpers the deployments and benchmarks start Flower with (no Flower process here)."""

import socket
import subprocess
import sys

import pytest

from fedgma.deployment.local import LocalDeployment
from fedgma.deployment.processes import _ephemeral_range, free_port


def test_free_ports_are_distinct_bindable_and_below_the_ephemeral_range():
    low, _ = _ephemeral_range()
    ports = [free_port() for _ in range(100)]
    assert len(set(ports)) == 100  # never the same port twice in one process
    assert all(10000 <= p < low for p in ports)
    for port in ports[:10]:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))


def test_waiting_for_supernodes_stops_at_the_first_one_that_exited(tmp_path):
    deployment = LocalDeployment(tmp_path, num_supernodes=1)
    log = tmp_path / "supernode-0.log"
    log.write_text("Starting Flower SuperNode\nRuntimeError: SuperNode Runtime HTTP API failed to start.\n")
    tmp_path.joinpath("superlink.log").write_text("")
    deployment.supernodes.append(subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"]))
    deployment.supernode_logs.append(log)
    deployment.supernodes[0].wait(30)
    with pytest.raises(RuntimeError, match=r"exited with status 3(.|\n)*failed to start"):
        deployment.wait_for_supernodes(timeout=60)
