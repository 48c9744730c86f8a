"""End to end in deployment: flower-superlink + 2 flower-supernode processes on loopback."""

import csv
import re
import subprocess

import pytest
from run_settings import ROOT

from fedgma.deployment.local import LocalDeployment

SMALL_RUN = {"train-images": 2000, "test-images": 1000}

pytestmark = pytest.mark.e2e


def tcp_peers(pids):
    """(local port, peer port) of the established TCP connections of ``pids``."""
    out = subprocess.run(
        ["ss", "-tnpH", "state", "established"], capture_output=True, text=True, errors="replace"
    ).stdout
    pairs = set()
    for line in out.splitlines():
        owners = {int(p) for p in re.findall(r"pid=(\d+)", line)}
        if owners & set(pids):
            local, peer = line.split()[2:4]
            pairs.add((int(local.rsplit(":", 1)[1]), int(peer.rsplit(":", 1)[1])))
    return pairs


def test_fedgma_run_over_grpc_fleet_api(tmp_path, host_settings):
    out = host_settings.output_root
    seen = set()
    with LocalDeployment(tmp_path / "deployment", num_supernodes=2, settings=host_settings) as deployment:
        deployment.wait_for_supernodes()
        supernode_pids = [p.pid for p in deployment.supernodes]

        def sample_connections():
            seen.update(tcp_peers(supernode_pids))

        run_id = deployment.cli.submit(
            ROOT,
            {
                "num-server-rounds": 2,
                "strategy": "fedgma",
                "variant": "ws",
                "partitioning": "non-iid",
                **SMALL_RUN,
                "num-partitions": 2,
                "run-name": "e2e-deployment",
            },
        )
        outcome = deployment.cli.wait(run_id, timeout=600, on_poll=sample_connections)
        superlink_log = deployment.superlink_log.read_text(errors="replace")
        fleet, own_ports = deployment.fleet_port, set(deployment.supernode_ports)

    assert outcome.completed, f"{outcome.status}: {outcome.details}\n{superlink_log[-3000:]}"
    assert f"Starting Fleet API (gRPC-rere) on 127.0.0.1:{fleet}" in superlink_log
    # The SuperNodes talk to the SuperLink only on its Fleet port; any other
    # connection they hold is inbound, from their own ClientApp processes.
    outbound = {peer for local, peer in seen if local not in own_ports}
    assert fleet in outbound
    assert outbound <= {fleet} | own_ports, f"unexpected peers {outbound}"

    rows = list(csv.DictReader((out / "e2e-deployment" / "metrics.csv").open()))
    assert [int(r["round"]) for r in rows] == [0, 1, 2]
    assert all(int(r["replies-used"]) == 2 for r in rows[1:])
    for row in rows[1:]:
        # Each message started a flwr-clientapp process; its start-up, set-up and training
        # all happen while the server waits for the replies.
        client = sum(float(row[k]) for k in ("clientapp-start-seconds", "setup-seconds", "train-seconds"))
        assert float(row["clientapp-start-seconds"]) > 0 and float(row["train-seconds"]) > 0
        assert client < float(row["train-wait-seconds"]) < float(row["round-seconds"])
        # Before the ClientApp started, the instruction waited for the SuperNode's pull (every 3 s);
        # after the newest reply was made, for its upload and the server's pull. The mean client's
        # path and that lag fit in the server's wait (clocks are one machine's here).
        pull_wait, lag = float(row["pull-wait-seconds"]), float(row["train-reply-lag-seconds"])
        assert pull_wait > 0 and lag >= 0
        assert pull_wait + client + lag < float(row["train-wait-seconds"]) + 0.1
    assert (out / "e2e-deployment" / "final_model.pt").is_file()


def tls_handshake(port, ca_file):
    """openssl's verdict on the server certificate presented on ``port``."""
    result = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-CAfile", str(ca_file),
         "-verify_return_error", "-alpn", "h2"],
        input="", capture_output=True, text=True, errors="replace", timeout=30,
    )
    return result.returncode, result.stdout


def test_fedgma_run_with_tls(tmp_path, host_settings):
    certs = tmp_path / "certs"
    subprocess.run(["bash", str(ROOT / "scripts" / "make-certs.sh"), str(certs)], check=True)
    out = host_settings.output_root
    with LocalDeployment(tmp_path / "deployment", num_supernodes=2, certs=certs,
                         settings=host_settings) as deployment:
        deployment.wait_for_supernodes()
        code, handshake = tls_handshake(deployment.fleet_port, certs / "ca.crt")
        run_id = deployment.cli.submit(
            ROOT,
            {"num-server-rounds": 1, **SMALL_RUN, "run-name": "tls"},
        )
        outcome = deployment.cli.wait(run_id, timeout=600)
    assert code == 0 and "Verify return code: 0 (ok)" in handshake, handshake
    assert outcome.completed, f"{outcome.status}: {outcome.details}"
    assert (out / "tls" / "final_model.pt").is_file()
