"""A grid run on an existing two-host Ray cluster (network namespaces): ``ray start --head`` on one
host, ``ray start --address`` on the other, then ``fedgma grid run --ray-address`` on the head,
as the README says. Its ClientApps run on both hosts (each host's own Ray log holds the clients'
lines), and its metrics are those of the same run on one machine with a private Ray."""

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from netns_hosts import VirtualHosts, netns_available
from run_settings import ROOT

from fedgma.app.run_folder import RunFolder
from fedgma.deployment.processes import BIN
from fedgma.lab.experiments.runner import metrics_differences

pytestmark = pytest.mark.e2e

RUN = "binary-non-iid_ws-lr1_seed0"  # FedGMA, 2 clients, 2 rounds (the smoke grid)
PORT = 6379  # a fresh namespace: no other program holds it


def stop_namespace(namespace):
    """Kill every process of a network namespace (the Ray processes ``ray start`` left there)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = subprocess.run(["ip", "netns", "pids", namespace], capture_output=True, text=True).stdout.split()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), sig)
        deadline = time.monotonic() + 15
        while pids and time.monotonic() < deadline:
            time.sleep(0.2)
            pids = subprocess.run(["ip", "netns", "pids", namespace], capture_output=True, text=True).stdout.split()
        if not pids:
            return
    raise AssertionError(f"processes of {namespace} outlived SIGKILL: {pids}")


def trained(temp_dir):
    """(round, partition) of each training message the ClientApps logged on one host (its Ray
    worker logs, below the host's own Ray temp dir)."""
    found = set()
    for path in temp_dir.glob("session_*/logs/worker-*"):
        found |= {(int(m[0]), int(m[1])) for m in re.findall(r"fedgma client: round (\d+), partition (\d+) of 2",
                                                             path.read_text(errors="replace"))}
    return found


@pytest.mark.skipif(netns_available() is not None, reason=str(netns_available()))
def test_a_grid_run_spreads_its_clients_over_a_two_host_ray_cluster(tmp_path, shared_data_dir, request):
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", FEDGMA_DATA_DIR=str(shared_data_dir),
               FEDGMA_DOWNLOAD="false", PYTHONPATH=str(ROOT))
    env.pop("RAY_ADDRESS", None)
    grid = [sys.executable, "-m", "fedgma", "grid", "run", "smoke", "--runs", RUN, "--no-download",
            "--app", str(ROOT)]
    # Ray's socket paths must stay under 107 bytes: its temp dirs go below a short folder.
    short = Path(tempfile.mkdtemp(prefix="fgray", dir="/tmp"))
    request.addfinalizer(lambda: shutil.rmtree(short, ignore_errors=True))
    temp = {name: short / name for name in ("head", "worker")}
    # Each node: 1 CPU, so the two clients' actors cannot both sit on one host.
    node = ["--num-cpus=1", "--object-store-memory=80000000", "--disable-usage-stats"]
    with VirtualHosts(["head", "worker"]) as hosts:
        head = hosts.address("head")
        try:
            started = subprocess.run(
                [*hosts.prefix("head"), str(BIN / "ray"), "start", "--head", f"--node-ip-address={head}",
                 f"--port={PORT}", "--include-dashboard=false", f"--temp-dir={temp['head']}", *node],
                env=env, capture_output=True, text=True, timeout=180)
            assert started.returncode == 0, started.stdout + started.stderr
            joined = subprocess.run(
                [*hosts.prefix("worker"), str(BIN / "ray"), "start", f"--address={head}:{PORT}",
                 f"--node-ip-address={hosts.address('worker')}", f"--temp-dir={temp['worker']}", *node],
                env=env, capture_output=True, text=True, timeout=180)
            assert joined.returncode == 0, joined.stdout + joined.stderr
            on_cluster = subprocess.run(
                [*hosts.prefix("head"), *grid, "--results-dir", str(tmp_path / "cluster"),
                 "--ray-address", f"{head}:{PORT}"],
                env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
            assert on_cluster.returncode == 0, on_cluster.stdout[-3000:] + on_cluster.stderr[-3000:]
            assert f"on the Ray cluster at {head}:{PORT}" in on_cluster.stdout
        finally:
            # Not `ray stop`: it stops every Ray on the machine, other people's too. Only this test's
            # processes live in its namespaces.
            for name in ("worker", "head"):
                stop_namespace(hosts.namespace(name))
    # Both hosts ran clients: each host's own Ray workers logged training messages.
    on_host = {name: trained(folder) for name, folder in temp.items()}
    assert on_host["head"] and on_host["worker"], on_host
    assert on_host["head"] | on_host["worker"] == {(1, 0), (1, 1), (2, 0), (2, 1)}  # 2 rounds x 2 clients

    # The same run on this machine alone, with a private Ray: the same metrics.
    alone = subprocess.run([*grid, "--results-dir", str(tmp_path / "alone")], env=env, capture_output=True,
                           text=True, timeout=600, cwd=ROOT)
    assert alone.returncode == 0, alone.stdout[-3000:] + alone.stderr[-3000:]
    assert "one run at a time, each with a private Ray" in alone.stdout
    folders = [RunFolder.at(tmp_path / where / "runs", "", RUN) for where in ("cluster", "alone")]
    assert folders[0].is_finished() and metrics_differences(*folders) == []
