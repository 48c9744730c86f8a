"""A deployment across separate hosts (network namespaces): one server host, three client
hosts, TLS and SuperNode authentication on, a 3-round FedGMA run; an unregistered SuperNode is
refused and one trusting the wrong CA fails with a clear error. The SuperLink runs as the README
says (Control API on the server's loopback): from a client host, the Control port is unreachable
and submitting another app or registering a key fails, while the operator's run completes."""

import csv
import re
import subprocess
import sys
import time

import pytest
from netns_hosts import VirtualHosts, netns_available
from run_settings import ROOT

from fedgma.deployment.flower import FlowerCli, HostSettings, flower_env, write_connection
from fedgma.deployment.processes import BIN, SUPERLINK, start, stop

pytestmark = pytest.mark.e2e

CONTROL_PORT, FLEET_PORT = 8000, 9092  # fresh namespaces: no other program holds these ports


def wait_for_line(path, pattern, count=1, timeout=90, process=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = path.read_text(errors="replace") if path.exists() else ""
        if len(re.findall(pattern, text)) >= count:
            return text
        if process is not None and process.poll() is not None:
            raise AssertionError(f"process exited ({process.returncode}):\n{text[-3000:]}")
        time.sleep(0.5)
    raise TimeoutError(f"{pattern!r} x{count} not in {path} after {timeout} s:\n{text[-3000:]}")


def peers(hosts, name, pid):
    """Remote ip:port of the established TCP connections of ``pid`` on host ``name``."""
    out = subprocess.run([*hosts.prefix(name), "ss", "-tnpH", "state", "established"],
                         capture_output=True, text=True, errors="replace").stdout
    found = {line.split()[3] for line in out.splitlines() if f"pid={pid}," in line}
    return {re.sub(r"^\[::ffff:([0-9.]+)\]", r"\1", peer) for peer in found}  # IPv4-mapped form


@pytest.mark.skipif(netns_available() is not None, reason=str(netns_available()))
def other_app(folder):
    """A different Flower app, as an attacker would submit it: its ServerApp would run on the
    SuperLink and its ClientApp on every SuperNode."""
    (folder / "intruder").mkdir(parents=True)
    (folder / "intruder" / "__init__.py").write_text("")
    (folder / "intruder" / "apps.py").write_text(
        "from flwr.clientapp import ClientApp\nfrom flwr.serverapp import ServerApp\n"
        "server = ServerApp()\nclient = ClientApp()\n")
    (folder / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["hatchling"]\nbuild-backend = "hatchling.build"\n'
        '[project]\nname = "intruder"\nversion = "1.0.0"\ndependencies = []\n'
        '[tool.flwr.app]\npublisher = "intruder"\n'
        '[tool.flwr.app.components]\nserverapp = "intruder.apps:server"\nclientapp = "intruder.apps:client"\n'
        '[tool.flwr.app.config]\n')
    return folder


def test_three_client_hosts_with_tls_and_supernode_auth(tmp_path, shared_data_dir):
    names = ["server", "client1", "client2", "client3"]
    processes = []
    with VirtualHosts(names) as hosts:
        server = hosts.address("server")
        certs, wrong = tmp_path / "certs", tmp_path / "wrong-ca"
        subprocess.run(["bash", str(ROOT / "scripts/make-certs.sh"), str(certs), server], check=True,
                       capture_output=True)
        subprocess.run(["bash", str(ROOT / "scripts/make-certs.sh"), str(wrong), server], check=True,
                       capture_output=True)
        keys = tmp_path / "keys"
        subprocess.run(["bash", str(ROOT / "scripts/make-supernode-keys.sh"), str(keys), "3"], check=True,
                       capture_output=True)
        subprocess.run(["ssh-keygen", "-q", "-t", "ecdsa", "-b", "384", "-N", "", "-f",
                        str(keys / "intruder")], check=True)
        server_settings = HostSettings(output_root=tmp_path / "outputs", data_dir=shared_data_dir, download=False)
        env = flower_env(tmp_path / "flwr-home", server_settings)
        # The operator submits on the server host, to the Control API on its loopback.
        write_connection(tmp_path / "flwr-home", "fleet", f"127.0.0.1:{CONTROL_PORT}", certs / "ca.crt")
        cli = FlowerCli(env, "fleet", prefix=hosts.prefix("server"))
        # An attacker on a client host holds the CA certificate (every client host does).
        attacker_env = flower_env(tmp_path / "attacker-home")
        write_connection(tmp_path / "attacker-home", "stolen", f"{server}:{CONTROL_PORT}", certs / "ca.crt")
        attacker = FlowerCli(attacker_env, "stolen", prefix=hosts.prefix("client3"))
        try:
            superlink_log = tmp_path / "superlink.log"
            superlink = start([
                *hosts.prefix("server"), *SUPERLINK,
                "--ssl-ca-certfile", str(certs / "ca.crt"), "--ssl-certfile", str(certs / "server.pem"),
                "--ssl-keyfile", str(certs / "server.key"), "--enable-supernode-auth",
                "--host", "127.0.0.1", "--port", str(CONTROL_PORT), "--fleet-api-address", f"{server}:{FLEET_PORT}",
                "--disable-runtime-dependency-installation",
            ], env, superlink_log)
            processes.append(superlink)
            wait_for_line(superlink_log, r"Starting Fleet API \(gRPC-rere\)", process=superlink)
            for i in range(3):
                register = subprocess.run(cli.command("supernode", "register", str(keys / f"supernode-{i}.pub"),
                                                      "fleet"), env=env, capture_output=True, text=True)
                assert "registered successfully" in register.stdout, register.stdout + register.stderr

            # Each client host says where its data lives in its own node config.
            node_env = flower_env(tmp_path / "flwr-home")

            def supernode(host, key, ca, partition, log, port=9094):
                process = start([
                    *hosts.prefix(host), str(BIN / "flower-supernode"), "--root-certificates", str(ca),
                    "--superlink", f"{server}:{FLEET_PORT}", "--auth-supernode-private-key", str(key),
                    "--node-config", f"partition-id={partition} num-partitions=3 data-dir='{shared_data_dir}' "
                                     "download=false",
                    "--max-retries", "3",
                    "--port", str(port),  # two SuperNodes on one host need their own ClientApp ports
                ], node_env, tmp_path / log)
                processes.append(process)
                return process

            clients = [supernode(f"client{i + 1}", keys / f"supernode-{i}", certs / "ca.crt", i, f"node{i}.log")
                       for i in range(3)]
            wait_for_line(superlink_log, "Activated node_id", count=3)
            intruder = supernode("client3", keys / "intruder", certs / "ca.crt", 0, "intruder.log", port=9095)
            misled = supernode("client2", keys / "supernode-1", wrong / "ca.crt", 1, "wrong-ca.log", port=9095)
            assert intruder.wait(90) != 0 and misled.wait(90) != 0

            # From a client host: the Control port does not answer, and neither a run of another app
            # nor a key registration gets through.
            probe = subprocess.run([*hosts.prefix("client3"), sys.executable, "-c",
                                    "import socket, sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), 5)",
                                    server, str(CONTROL_PORT)], capture_output=True, text=True)
            with pytest.raises(RuntimeError, match="flwr run"):
                attacker.submit(other_app(tmp_path / "intruder-app"), {})
            rogue = subprocess.run(attacker.command("supernode", "register", str(keys / "intruder.pub"), "stolen"),
                                   env=attacker_env, capture_output=True, text=True, timeout=120)
            listing = subprocess.run(attacker.command("ls", "stolen"), env=attacker_env, capture_output=True,
                                     text=True, timeout=120)

            run_id = cli.submit(ROOT, {
                "num-server-rounds": 3, "min-nodes": 3, "num-partitions": 3, "train-images": 1500,
                "test-images": 500, "local-epochs": 1, "run-name": "multihost",
            })
            seen = {}

            def sample():
                for i, client in enumerate(clients):
                    seen.setdefault(i, set()).update(peers(hosts, f"client{i + 1}", client.pid))

            outcome = cli.wait(run_id, timeout=900, on_poll=sample)
            superlink_text = superlink_log.read_text(errors="replace")
            runs = cli._json(["ls", "fleet"]).get("runs", [])
        finally:
            for process in processes:
                stop(process)

    assert outcome.completed, f"{outcome.status}: {outcome.details}\n{superlink_text[-3000:]}"
    def said(result):  # the last line with words in it (flwr draws its errors in boxes)
        lines = [line.strip("│╭╮╰╯─ ") for line in (result.stdout + result.stderr).splitlines()]
        return [line for line in lines if any(c.isalpha() for c in line)][-1]

    print("from a client host:", *[said(r) for r in (probe, rogue, listing)], sep="\n  ")
    assert probe.returncode != 0 and "ConnectionRefusedError" in probe.stderr, probe.stderr
    assert rogue.returncode != 0 and "registered successfully" not in rogue.stdout, rogue.stdout + rogue.stderr
    assert listing.returncode != 0, listing.stdout
    assert [int(r["run-id"]) for r in runs] == [run_id], runs  # the other app never became a run
    rows = list(csv.DictReader((tmp_path / "outputs" / "multihost" / "metrics.csv").open()))
    assert [int(r["round"]) for r in rows] == [0, 1, 2, 3]
    assert all(int(r["replies-used"]) == 3 for r in rows[1:])
    assert superlink_text.count("Activated node_id") == 3  # never the intruder
    assert "No SuperNode found with the given public key" in superlink_text
    intruder_log = (tmp_path / "intruder.log").read_text(errors="replace")
    assert "Failed to activate SuperNode" in intruder_log
    wrong_log = (tmp_path / "wrong-ca.log").read_text(errors="replace")
    assert "CERTIFICATE_VERIFY_FAILED" in wrong_log
    # Each client host's SuperNode talked to the SuperLink's Fleet API and to nothing else
    # off-host (its other connections come from its own ClientApp processes over loopback).
    for i in range(3):
        off_host = {peer for peer in seen[i] if not peer.startswith("127.0.0.1:")}
        assert off_host == {f"{server}:{FLEET_PORT}"}, seen[i]
