"""The process helpers the deployments and benchmarks start Flower with (no Flower process here)."""

import os
import socket
import subprocess
import sys
import time

import pytest

from fedgma.deployment.local import LocalDeployment
from fedgma.deployment.processes import _ephemeral_range, alive, descendants, free_port, start, stop


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


# Starts a grandchild in a session of its own that ignores SIGTERM, says its pid, and exits at
# once: the grandchild is orphaned, as a simulation Flower's SuperExec starts while being stopped is.
ORPHAN_MAKER = """
import signal, subprocess, sys, time
grandchild = subprocess.Popen([sys.executable, "-c",
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"],
    start_new_session=True)
print(grandchild.pid, flush=True)
time.sleep(600 if sys.argv[1] == "stay" else 0)
"""


@pytest.mark.parametrize("parent", ["stay", "exit"])
def test_stopping_a_started_process_ends_what_it_started_even_once_orphaned(tmp_path, parent):
    process = start([sys.executable, "-c", ORPHAN_MAKER, parent], dict(os.environ), tmp_path / "log")
    deadline = time.monotonic() + 30
    while not (tmp_path / "log").read_text().strip() and time.monotonic() < deadline:
        time.sleep(0.05)
    grandchild = int((tmp_path / "log").read_text().split()[0])
    if parent == "exit":
        process.wait(30)
        assert grandchild not in descendants(process.pid)  # found by nothing but its tag
    assert alive(grandchild)
    stop(process, grace=1.0)
    deadline = time.monotonic() + 10
    while alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(grandchild)
